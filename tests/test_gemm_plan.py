"""The CUDA GEMM's TileShape and GemmPlan refuse what the kernel cannot run, with a one-line ValueError.

These checks are host-side: they run the same in the simulator and on a GPU. The products
themselves are tested against NumPy in test_backends_agree.py.
"""

import numpy as np
import pytest

from nbcnn.cuda.gemm import (GPU_TILES, MAX_GRID_Z, GemmPlan, TileShape, _launch, gemm, gemm_batch_sum,
                             make_gemm_kernel)


def refused(match, build, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        build(*args, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape, match", [
    ((128, 128, 16, 6, 8), "must divide the block tile"),        # 128 rows are not a whole number of 6-row threads
    ((128, 128, 16, 8, 8, 3), "pack width must be 1, 2 or 4"),
    ((64, 64, 8, 2, 2, 4), "multiples of the pack width"),       # a thread's 2 rows cannot hold a pack of 4
    ((128, 128, 6, 8, 8), "multiple of 4"),                      # the k loop is unrolled by four
    ((16, 16, 4, 1, 1), "split .* evenly"),                      # 256 threads, 64 packs of A per tile
    ((128, 0, 16, 8, 8), "positive"),
])
def test_tile_shapes_the_kernel_cannot_run_are_refused(shape, match):
    refused(match, TileShape, *shape)


def test_tiles_beyond_the_shared_memory_of_a_block_are_refused():
    """float64 at the float32 tile shape needs 68 KB of shared memory; a block may have 48 KB."""
    refused("shared memory", make_gemm_kernel, False, False, np.float64, GPU_TILES[np.dtype(np.float32)])


def test_packs_wider_than_one_are_refused_for_float64():
    refused("for float32", make_gemm_kernel, False, False, np.float64, GPU_TILES[np.dtype(np.float64)].with_width(2))


@pytest.mark.parametrize("fields, match", [
    (dict(m=-1), "m = -1 is outside"),
    (dict(k=2**31), "k = 2147483648 is outside"),
    (dict(stride_b=-4), "stride_b = -4 is outside"),
    (dict(batch=0), "batch 0 is not between 1"),
    (dict(batch=MAX_GRID_Z + 1, stride_c=64), "grid limit of 65535"),
    (dict(terms=0), "terms must be at least 1"),
    (dict(batch=2, stride_c=63), "outputs of the batch would overlap"),  # m * n = 64
    (dict(bias_per="rows"), "bias_per must be 'row', 'col' or None"),
    (dict(tiles=(128, 128, 16, 8, 8)), "tiles must be a TileShape"),
])
def test_plans_the_kernel_cannot_run_are_refused(fields, match):
    refused(match, GemmPlan, **{**dict(m=8, n=8, k=8), **fields})


def test_equal_plans_share_one_launch():
    """gemm() works out a plan's launch once: plans built apart but equal find the cached one."""
    one = GemmPlan(8, 8, 8, batch=2, stride_b=64, stride_c=64, bias_per="row")
    other = GemmPlan(8, 8, 8, batch=2, stride_b=64, stride_c=64, bias_per="row")
    assert one == other and hash(one) == hash(other)
    assert _launch(one, np.dtype(np.float32)) is _launch(other, np.dtype(np.float32))


def device(n, dtype=np.float32):
    from numba import cuda
    return cuda.to_device(np.zeros(n, dtype))


def test_a_bias_the_plan_does_not_place_is_refused():
    refused("bias_per is None but bias is given", gemm, device(64), device(64), device(64), GemmPlan(8, 8, 8),
            device(8))


def test_a_plan_with_a_bias_needs_the_bias():
    refused("bias_per is 'col' but bias is None", gemm, device(64), device(64), device(64),
            GemmPlan(8, 8, 8, bias_per="col"))


def test_arrays_smaller_than_the_plan_reaches_are_refused():
    """Batch 2 with B slices 64 apart reads 128 elements of b: 127 would be read past its end on a GPU."""
    refused("b has 127 elements, the plan reaches 128", gemm, device(64), device(127), device(128),
            GemmPlan(8, 8, 8, batch=2, stride_b=64, stride_c=64))


def test_arrays_of_mixed_dtypes_are_refused():
    refused("must share one dtype", gemm, device(64), device(64, np.float64), device(64), GemmPlan(8, 8, 8))


def test_the_batch_sum_refuses_a_plan_that_does_not_accumulate():
    """gemm_batch_sum adds into c (beta 1): a plan asking for c = sum (beta 0) would be silently wrong."""
    refused("beta 1", gemm_batch_sum, device(128), device(128), device(64), device(3 * 64),
            GemmPlan(8, 8, 8, terms=2, stride_a=64, stride_b=64))
