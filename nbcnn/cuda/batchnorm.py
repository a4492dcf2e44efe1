"""Batch normalisation on CUDA: a per-channel reduction kernel, then an element-wise kernel, each way.

The reduction runs a block per channel: its threads stride over the channel's N*S values,
then add their float64 partial sums in a fixed tree (no atomics: run-to-run identical). The
element-wise part is a kernel of its own, over every element on every SM, rather than the
tail of the reduction, for two reasons: a block per channel leaves most of a GPU idle where
C is below a few hundred, and num_batches_tracked must be read by every block of the
reduction (a cumulative average weighs the batch by it) before it is incremented, which
only a later launch can do. Eval's forward is one element-wise kernel. The per-channel and
per-element rules are nbcnn.kernel_math's (bn_*), shared with the CPU.
"""

import numpy as np
from numba import cuda

from ..kernel_math import (bn_combine_grad_sums, bn_combine_stats, bn_dx, bn_invstd, bn_normalise, bn_update_running,
                           bn_xhat)
from .array import check_int32, divmod32, empty, launch, unravel3
from .gemm import REDUCE_THREADS, block_sum


@cuda.jit(device=True)
def channel_mean_ssd(x, c):
    """(mean, sum of squared deviations from it) of channel c of x (N,C,S), two passes in float64, summed by
    the block's REDUCE_THREADS threads in a fixed tree; every thread of the block must call it."""
    N, _, S = x.shape
    count = N * S
    acc = 0.0
    for i in range(cuda.threadIdx.x, count, REDUCE_THREADS):
        n, s = divmod32(i, S)
        acc += np.float64(x[n, c, s])
    m = block_sum(acc) / count
    acc = 0.0
    for i in range(cuda.threadIdx.x, count, REDUCE_THREADS):
        n, s = divmod32(i, S)
        d = np.float64(x[n, c, s]) - m
        acc += d * d
    return m, block_sum(acc)


@cuda.jit(cache=True)
def batchnorm_stats_kernel(x, eps, momentum, running_mean, running_var, num_batches_tracked, track, mean, invstd):
    """Block c: mean and biased variance of channel c of x (N,C,S) (two passes, float64); mean, invstd; running statistics if track."""
    N, _, S = x.shape
    c = cuda.blockIdx.x
    count = N * S
    m, ssd = channel_mean_ssd(x, c)
    var = ssd / count
    if cuda.threadIdx.x == 0:
        mean[c] = m
        invstd[c] = bn_invstd(var, eps)
        if track:  # the counter is incremented by the next kernel, after every block has read it
            bn_update_running(running_mean, running_var, c, m, var, count, momentum, num_batches_tracked[()] + 1)


@cuda.jit(cache=True)
def batchnorm_normalise_kernel(x, gamma, beta, mean, invstd, num_batches_tracked, track, y):
    """y = bn_normalise(x, mean[c], invstd[c], gamma[c], beta[c]) over x (N,C,S); the first thread counts the batch if track."""
    _, C, S = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    if track and start == 0:
        num_batches_tracked[()] += 1
    for e in range(start, x.size, step):
        n, c, s = unravel3(e, C, S)
        y[n, c, s] = bn_normalise(x[n, c, s], mean[c], invstd[c], gamma[c], beta[c])


@cuda.jit(cache=True)
def batchnorm_forward_eval_kernel(x, gamma, beta, running_mean, running_var, eps, y, mean, invstd):
    """y = bn_normalise(x, running_mean[c], 1/sqrt(running_var[c] + eps), gamma[c], beta[c]) over x (N,C,S); mean, invstd."""
    _, C, S = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, C, step):
        mean[c] = running_mean[c]
        invstd[c] = bn_invstd(running_var[c], eps)
    for e in range(start, x.size, step):
        n, c, s = unravel3(e, C, S)
        y[n, c, s] = bn_normalise(x[n, c, s], running_mean[c], bn_invstd(running_var[c], eps), gamma[c], beta[c])


@cuda.jit(cache=True)
def batchnorm_grad_sums_kernel(x, dy, mean, invstd, sums, dgamma, dbeta):
    """Block c: sums[c] = (sum dy, sum dy*xhat) over channel c of x, dy (N,C,S) in float64; dbeta[c], dgamma[c] += them."""
    N, _, S = x.shape
    c = cuda.blockIdx.x
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    for i in range(cuda.threadIdx.x, N * S, REDUCE_THREADS):
        n, s = divmod32(i, S)
        g = np.float64(dy[n, c, s])
        sum_dy += g
        sum_dy_xhat += g * bn_xhat(x[n, c, s], mean[c], invstd[c])
    sum_dy = block_sum(sum_dy)
    sum_dy_xhat = block_sum(sum_dy_xhat)
    if cuda.threadIdx.x == 0:
        sums[c, 0] = sum_dy
        sums[c, 1] = sum_dy_xhat
        dbeta[c] += sum_dy
        dgamma[c] += sum_dy_xhat


@cuda.jit(cache=True)
def batchnorm_dx_kernel(x, dy, gamma, mean, invstd, sums, batch_stats, dx):
    """dx = bn_dx(x, dy, mean[c], invstd[c], gamma[c], sums[c, 0], sums[c, 1], N*S, batch_stats) over x (N,C,S)."""
    N, C, S = x.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, step):
        n, c, s = unravel3(e, C, S)
        dx[n, c, s] = bn_dx(x[n, c, s], dy[n, c, s], mean[c], invstd[c], gamma[c], sums[c, 0], sums[c, 1],
                            N * S, batch_stats)


@cuda.jit(cache=True)
def batchnorm_local_stats_kernel(x, stats):
    """Block c: stats[c] = (N*S, mean, sum of squared deviations) of channel c of x (N,C,S), two passes in float64."""
    N, _, S = x.shape
    c = cuda.blockIdx.x
    m, ssd = channel_mean_ssd(x, c)
    if cuda.threadIdx.x == 0:
        stats[c, 0] = N * S
        stats[c, 1] = m
        stats[c, 2] = ssd


@cuda.jit(cache=True)
def batchnorm_combine_stats_kernel(stats, eps, momentum, running_mean, running_var, num_batches_tracked, track,
                                   mean, invstd):
    """Per channel c: the processes' stats (P,C,3) combined (bn_combine_stats); mean, invstd; running statistics if track."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, stats.shape[1], step):
        count, m, ssd = bn_combine_stats(stats, c)
        var = ssd / count
        mean[c] = m
        invstd[c] = bn_invstd(var, eps)
        if track:  # the counter is incremented by the normalise kernel, after every thread has read it
            bn_update_running(running_mean, running_var, c, m, var, count, momentum, num_batches_tracked[()] + 1)


@cuda.jit(cache=True)
def batchnorm_combine_grad_sums_kernel(stats, sums, combined):
    """Per channel c: combined[c] = bn_combine_grad_sums of the processes' stats (P,C,3) and sums (P,C,2)."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, stats.shape[1], step):
        a, b = bn_combine_grad_sums(stats, sums, c)
        combined[c, 0] = a
        combined[c, 1] = b


def batchnorm_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var, num_batches_tracked,
                            y, mean, invstd, ws):
    check_int32(x)
    track = running_mean is not None
    if not track:  # the kernels take arrays in their places either way; they touch none of these
        running_mean, running_var, num_batches_tracked = mean, invstd, ws.get("batches", (), np.int64, empty)
    if x.size:
        batchnorm_stats_kernel[x.shape[1], REDUCE_THREADS](x, float(eps), float(momentum), running_mean, running_var,
                                                            num_batches_tracked, track, mean, invstd)
        batchnorm_normalise_kernel[launch(x.size)](x, gamma, beta, mean, invstd, num_batches_tracked, track, y)


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, y, mean, invstd):
    check_int32(x)
    if x.size:
        batchnorm_forward_eval_kernel[launch(x.size)](x, gamma, beta, running_mean, running_var, float(eps),
                                                      y, mean, invstd)


def batchnorm_backward(x, gamma, mean, invstd, dy, batch_stats, dx, dgamma, dbeta, ws):
    check_int32(x)
    if not x.size:
        return
    sums = ws.get("sums", (x.shape[1], 2), np.float64, empty)
    batchnorm_grad_sums_kernel[x.shape[1], REDUCE_THREADS](x, dy, mean, invstd, sums, dgamma, dbeta)
    if dx is not None:
        batchnorm_dx_kernel[launch(x.size)](x, dy, gamma, mean, invstd, sums, bool(batch_stats), dx)


def batchnorm_local_stats(x, stats):
    check_int32(x)
    batchnorm_local_stats_kernel[x.shape[1], REDUCE_THREADS](x, stats)


def batchnorm_forward_gathered(x, gamma, beta, eps, momentum, stats, running_mean, running_var, num_batches_tracked,
                               y, mean, invstd, ws):
    check_int32(x)
    track = running_mean is not None
    if not track:  # as batchnorm_forward_train
        running_mean, running_var, num_batches_tracked = mean, invstd, ws.get("batches", (), np.int64, empty)
    batchnorm_combine_stats_kernel[launch(x.shape[1])](stats, float(eps), float(momentum), running_mean, running_var,
                                                       num_batches_tracked, track, mean, invstd)
    batchnorm_normalise_kernel[launch(x.size)](x, gamma, beta, mean, invstd, num_batches_tracked, track, y)


def batchnorm_grad_sums(x, dy, mean, invstd, sums, dgamma, dbeta):
    check_int32(x)
    batchnorm_grad_sums_kernel[x.shape[1], REDUCE_THREADS](x, dy, mean, invstd, sums, dgamma, dbeta)


def batchnorm_backward_gathered(x, dy, gamma, mean, invstd, stats, sums, dx, ws):
    check_int32(x)
    combined = ws.get("sums", (x.shape[1], 2), np.float64, empty)
    batchnorm_combine_grad_sums_kernel[launch(x.shape[1])](stats, sums, combined)
    batchnorm_dx_kernel[launch(x.size)](x, dy, gamma, mean, invstd, combined, True, dx)
