"""Batch normalisation on the CPU: one kernel each way, one channel per parallel iteration.

A channel's N*S values are summed in float64, row by row (see the row_* helpers), then the
same iteration writes the channel's outputs: the per-channel and per-element rules are
nbcnn.kernel_math's (bn_*), shared with CUDA.
"""

import numpy as np
from numba import njit, prange

from ..kernel_math import (bn_combine_grad_sums, bn_combine_stats, bn_dx, bn_invstd, bn_normalise, bn_update_running,
                           bn_xhat)
from .array import empty


# The reductions add in float64 with reassociation allowed: LLVM then vectorises them (2x on
# ResNet's maps), in an order fixed by the compiled code, so results stay run-to-run identical.
@njit(fastmath={"reassoc"}, cache=True)
def row_sum(row):
    """sum of row[s], in float64."""
    acc = 0.0
    for s in range(row.shape[0]):
        acc += np.float64(row[s])
    return acc


@njit(fastmath={"reassoc"}, cache=True)
def row_squared_deviations(row, m):
    """sum of (row[s] - m)^2, in float64."""
    acc = 0.0
    for s in range(row.shape[0]):
        d = np.float64(row[s]) - m
        acc += d * d
    return acc


@njit(fastmath={"reassoc"}, cache=True)
def row_grad_sums(x, dy, mean, invstd):
    """(sum of dy[s], sum of dy[s] * xhat[s]), in float64."""
    sum_dy = 0.0
    sum_dy_xhat = 0.0
    for s in range(x.shape[0]):
        g = np.float64(dy[s])
        sum_dy += g
        sum_dy_xhat += g * bn_xhat(x[s], mean, invstd)
    return sum_dy, sum_dy_xhat


@njit(cache=True)
def channel_mean_ssd(x, c):
    """(mean, sum of squared deviations from it) of channel c of x (N,C,S): two passes, in float64."""
    N, _, S = x.shape
    acc = 0.0
    for n in range(N):
        acc += row_sum(x[n, c])
    m = acc / (N * S)
    acc = 0.0
    for n in range(N):
        acc += row_squared_deviations(x[n, c], m)
    return m, acc


@njit(parallel=True, cache=True)
def batchnorm_forward_train_kernel(x, gamma, beta, eps, momentum, running_mean, running_var, num_batches_tracked,
                                   track, y, mean, invstd):
    """Per channel c of x (N,C,S): mean, biased variance (two passes, float64), y = bn_normalise; running statistics if track."""
    N, C, S = x.shape
    count = N * S
    batches = num_batches_tracked[()] + 1 if track else 1
    for c in prange(C):
        m, ssd = channel_mean_ssd(x, c)
        var = ssd / count
        mean[c] = m
        invstd[c] = bn_invstd(var, eps)
        if track:
            bn_update_running(running_mean, running_var, c, m, var, count, momentum, batches)
        # with the stored (rounded) mean and invstd, as CUDA's second kernel reads them
        m, inv, g, b = mean[c], invstd[c], gamma[c], beta[c]
        for n in range(N):
            for s in range(S):
                y[n, c, s] = bn_normalise(x[n, c, s], m, inv, g, b)
    if track:
        num_batches_tracked[()] = batches


@njit(parallel=True, cache=True)
def batchnorm_forward_eval_kernel(x, gamma, beta, running_mean, running_var, eps, y, mean, invstd):
    """y = bn_normalise(x, running_mean[c], 1/sqrt(running_var[c] + eps), gamma[c], beta[c]) over x (N,C,S)."""
    N, C, S = x.shape
    for c in prange(C):
        m, inv, g, b = np.float64(running_mean[c]), bn_invstd(running_var[c], eps), gamma[c], beta[c]
        mean[c] = m
        invstd[c] = inv
        for n in range(N):
            for s in range(S):
                y[n, c, s] = bn_normalise(x[n, c, s], m, inv, g, b)


@njit(parallel=True, cache=True)
def batchnorm_backward_kernel(x, gamma, mean, invstd, dy, batch_stats, dx, dgamma, dbeta, want_dx):
    """Per channel c: dbeta += sum dy, dgamma += sum dy*xhat (float64); dx = bn_dx if want_dx."""
    N, C, S = x.shape
    for c in prange(C):
        m, inv, g = mean[c], invstd[c], gamma[c]
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for n in range(N):
            a, b = row_grad_sums(x[n, c], dy[n, c], m, inv)
            sum_dy += a
            sum_dy_xhat += b
        dbeta[c] += sum_dy
        dgamma[c] += sum_dy_xhat
        if want_dx:
            for n in range(N):
                for s in range(S):
                    dx[n, c, s] = bn_dx(x[n, c, s], dy[n, c, s], m, inv, g, sum_dy, sum_dy_xhat, N * S, batch_stats)


@njit(parallel=True, cache=True)
def batchnorm_local_stats_kernel(x, stats):
    """Per channel c of x (N,C,S): stats[c] = (N*S, mean, sum of squared deviations), two passes in float64."""
    N, C, S = x.shape
    for c in prange(C):
        stats[c, 0] = N * S
        stats[c, 1], stats[c, 2] = channel_mean_ssd(x, c)


@njit(parallel=True, cache=True)
def batchnorm_forward_gathered_kernel(x, gamma, beta, eps, momentum, stats, running_mean, running_var,
                                      num_batches_tracked, track, y, mean, invstd):
    """Per channel c: the processes' stats (P,C,3) combined (bn_combine_stats); mean, invstd, y = bn_normalise; running statistics if track."""
    N, C, S = x.shape
    batches = num_batches_tracked[()] + 1 if track else 1
    for c in prange(C):
        count, m, ssd = bn_combine_stats(stats, c)
        var = ssd / count
        mean[c] = m
        invstd[c] = bn_invstd(var, eps)
        if track:
            bn_update_running(running_mean, running_var, c, m, var, count, momentum, batches)
        m, inv, g, b = mean[c], invstd[c], gamma[c], beta[c]
        for n in range(N):
            for s in range(S):
                y[n, c, s] = bn_normalise(x[n, c, s], m, inv, g, b)
    if track:
        num_batches_tracked[()] = batches


@njit(parallel=True, cache=True)
def batchnorm_grad_sums_kernel(x, dy, mean, invstd, sums, dgamma, dbeta):
    """Per channel c: sums[c] = (sum dy, sum dy*xhat) over x, dy (N,C,S) in float64; dbeta[c], dgamma[c] += them."""
    N, C, S = x.shape
    for c in prange(C):
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for n in range(N):
            a, b = row_grad_sums(x[n, c], dy[n, c], mean[c], invstd[c])
            sum_dy += a
            sum_dy_xhat += b
        sums[c, 0] = sum_dy
        sums[c, 1] = sum_dy_xhat
        dbeta[c] += sum_dy
        dgamma[c] += sum_dy_xhat


@njit(parallel=True, cache=True)
def batchnorm_dx_gathered_kernel(x, dy, gamma, mean, invstd, stats, sums, dx):
    """Per channel c: the processes' sums combined (bn_combine_grad_sums); dx = bn_dx with this shard's count N*S."""
    N, C, S = x.shape
    for c in prange(C):
        a, b = bn_combine_grad_sums(stats, sums, c)
        m, inv, g = mean[c], invstd[c], gamma[c]
        for n in range(N):
            for s in range(S):
                dx[n, c, s] = bn_dx(x[n, c, s], dy[n, c, s], m, inv, g, a, b, N * S, True)


def batchnorm_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var, num_batches_tracked,
                            y, mean, invstd, ws):
    track = running_mean is not None
    if not track:  # the kernel takes arrays in their places either way; it touches none of these
        running_mean, running_var, num_batches_tracked = mean, invstd, ws.get("batches", (), np.int64, empty)
    batchnorm_forward_train_kernel(x, gamma, beta, float(eps), float(momentum), running_mean, running_var,
                                   num_batches_tracked, track, y, mean, invstd)


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, y, mean, invstd):
    batchnorm_forward_eval_kernel(x, gamma, beta, running_mean, running_var, float(eps), y, mean, invstd)


def batchnorm_backward(x, gamma, mean, invstd, dy, batch_stats, dx, dgamma, dbeta, ws):
    want_dx = dx is not None
    # numba compiles for an array in dx's place either way; x is one, and unwritten without want_dx
    batchnorm_backward_kernel(x, gamma, mean, invstd, dy, bool(batch_stats), dx if want_dx else x,
                              dgamma, dbeta, want_dx)


def batchnorm_local_stats(x, stats):
    batchnorm_local_stats_kernel(x, stats)


def batchnorm_forward_gathered(x, gamma, beta, eps, momentum, stats, running_mean, running_var, num_batches_tracked,
                               y, mean, invstd, ws):
    track = running_mean is not None
    if not track:  # as batchnorm_forward_train
        running_mean, running_var, num_batches_tracked = mean, invstd, ws.get("batches", (), np.int64, empty)
    batchnorm_forward_gathered_kernel(x, gamma, beta, float(eps), float(momentum), stats, running_mean, running_var,
                                      num_batches_tracked, track, y, mean, invstd)


def batchnorm_grad_sums(x, dy, mean, invstd, sums, dgamma, dbeta):
    batchnorm_grad_sums_kernel(x, dy, mean, invstd, sums, dgamma, dbeta)


def batchnorm_backward_gathered(x, dy, gamma, mean, invstd, stats, sums, dx, ws):
    batchnorm_dx_gathered_kernel(x, dy, gamma, mean, invstd, stats, sums, dx)
