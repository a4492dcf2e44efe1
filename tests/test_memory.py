"""The caching allocator: steady-state training allocates nothing, and memory is reused only when free."""

import gc
import os
import sys
import weakref

import numpy as np
import pytest

import nbcnn
from nbcnn import memory
from nbcnn.memory import CachingAllocator

import fake_device
from devices import DEVICES


def fresh_blocks(backend):
    return backend.memory_stats()["allocations"]


def filled(backend, shape, value, dtype=np.float32):
    a = backend.empty(shape, dtype)
    backend.fill(a, value)
    return a


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_allocates_nothing_in_steady_state(device):
    nbcnn.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nbcnn.Sequential(
        nbcnn.Conv2d(1, 4, 3, padding=1), nbcnn.ReLU(), nbcnn.LocalResponseNorm(3),
        nbcnn.MaxPool2d(3, 2), nbcnn.Flatten(), nbcnn.Dropout(0.5), nbcnn.Linear(4 * 2 * 2, 3)).to(device)
    opt = nbcnn.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    backend = nbcnn.get_backend(device)

    def step():
        # every layer kind at the smallest shapes: the simulator's cost is the GEMMs' size, the property is not
        x = nbcnn.asarray(rng.standard_normal((2, 1, 5, 5)).astype(np.float32), device=device)
        labels = nbcnn.asarray(rng.integers(0, 3, 2), device=device)
        loss, dlogits = nbcnn.softmax_cross_entropy(net(x), labels)
        net.backward(dlogits)
        opt.step()
        opt.zero_grad()

    for _ in range(2):  # the second step still meets the first step's activations alive in the layers
        step()
    before = fresh_blocks(backend)
    for _ in range(5):
        step()
    assert fresh_blocks(backend) == before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("derive", [lambda b, a: b.reshape(a, (24,)), lambda b, a: a[1:3]],
                         ids=["reshape", "slice"])
def test_memory_is_not_reused_while_a_view_of_it_lives(device, derive):
    backend = nbcnn.get_backend(device)
    a = filled(backend, (4, 6), 1.0)
    view = derive(backend, a)
    del a
    gc.collect()
    b = filled(backend, (4, 6), 2.0)
    assert np.all(backend.to_numpy(view) == 1.0)
    del b


def test_freed_memory_is_reused_for_any_dtype_of_the_same_size():
    cache = host_allocator(budget=1 << 20)
    a = cache.empty((4, 6), np.float32)
    where = a.__array_interface__["data"][0]
    del a
    b = cache.empty((12,), np.float64)
    assert b.__array_interface__["data"][0] == where and cache.allocations == 1
    assert b.shape == (12,) and b.dtype == np.float64


@pytest.mark.parametrize("device", DEVICES)
def test_empty_arrays_need_no_memory(device):
    backend = nbcnn.get_backend(device)
    before = backend.memory_stats()
    a = backend.empty((0, 3), np.float32)
    assert a.shape == (0, 3)
    after = backend.memory_stats()
    assert after["allocations"] == before["allocations"] and after["reserved_bytes"] == before["reserved_bytes"]


@pytest.mark.skipif(os.environ.get("NBCNN_POISON_MEMORY") != "1", reason="NBCNN_POISON_MEMORY is not 1")
@pytest.mark.parametrize("device", DEVICES)
def test_under_the_test_suite_every_array_handed_out_is_poisoned_even_a_reused_one(device):
    backend = nbcnn.get_backend(device)
    first = filled(backend, (37,), 0.0)
    del first
    gc.collect()
    again = backend.empty((37,), np.float32)  # the same block, with the zeros just written
    assert np.isnan(backend.to_numpy(again)).all()
    assert np.all(backend.to_numpy(backend.empty((5,), np.int32)) == -1)


def test_poisoning_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("NBCNN_POISON_MEMORY")
    assert not CachingAllocator(np.empty, sys.getrefcount, np.empty, fill_bytes=np.ndarray.fill).poison
    monkeypatch.setenv("NBCNN_POISON_MEMORY", "1")
    assert CachingAllocator(np.empty, sys.getrefcount, np.empty, fill_bytes=np.ndarray.fill).poison


def test_shapes_are_checked_like_numpy():
    cache = host_allocator(budget=1 << 20)
    assert cache.empty(5, np.float32).shape == (5,)
    with pytest.raises(TypeError):
        cache.empty((2.7,), np.float32)
    with pytest.raises(MemoryError):  # 2**64 + ... elements: refused by the budget, not wrapped around
        cache.empty((2**32 + 1, 2**32), np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_negative_dimensions_are_refused(device):
    with pytest.raises(ValueError, match=r"negative dimensions.*\(3, -1\)"):
        nbcnn.get_backend(device).empty((3, -1), np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_cache_frees_idle_blocks_and_keeps_busy_ones(device):
    backend = nbcnn.get_backend(device)
    busy = filled(backend, (1000,), 3.0)
    idle = backend.empty((1001,), np.float32)
    del idle
    gc.collect()
    backend.empty_cache()
    stats = backend.memory_stats()
    assert stats["reserved_bytes"] == stats["in_use_bytes"] >= busy.size * 4
    assert np.all(backend.to_numpy(busy) == 3.0)


def host_allocator(budget):
    """A CachingAllocator over numpy with a memory budget, like a GPU with `budget` bytes."""
    live = []

    def allocate(nbytes):
        live[:] = [b for b in live if b() is not None]
        if sum(b().nbytes for b in live) + nbytes > budget:
            raise MemoryError(f"out of memory allocating {nbytes} bytes")
        block = np.empty(nbytes, np.uint8)
        live.append(weakref.ref(block))
        return block

    return CachingAllocator(allocate, sys.getrefcount, np.empty)


def test_sizes_round_up_to_the_granule_and_share_a_block():
    cache = host_allocator(budget=1 << 20)
    a = cache.empty((100,), np.float32)  # 400 bytes -> a 512-byte block
    del a
    b = cache.empty((120,), np.float32)  # 480 bytes -> the same block
    assert cache.stats() == {"allocations": 1, "reserved_bytes": 512, "in_use_bytes": 512}
    del b


def test_out_of_memory_frees_idle_blocks_of_other_sizes_and_retries():
    cache = host_allocator(budget=4096)
    a = cache.empty((768,), np.float32)  # 3072 bytes, then idle
    del a
    b = cache.empty((512,), np.float32)  # 2048 more would exceed the budget with `a` cached
    assert cache.stats()["reserved_bytes"] == 2048
    del b


def test_out_of_memory_with_everything_busy_raises_nbcnns_error():
    cache = host_allocator(budget=4096)
    a = cache.empty((768,), np.float32)
    with pytest.raises(nbcnn.OutOfMemoryError):
        cache.empty((512,), np.float32)
    del a


def test_out_of_memory_with_an_empty_cache_raises_nbcnns_error():
    cache = host_allocator(budget=1024)
    with pytest.raises(nbcnn.OutOfMemoryError):
        cache.empty((512,), np.float32)


def test_the_backends_own_out_of_memory_error_counts_as_one():
    def allocate(nbytes):
        raise OSError("the backend's own way of saying it")
    cache = CachingAllocator(allocate, sys.getrefcount, np.empty, is_out_of_memory=lambda e: isinstance(e, OSError))
    with pytest.raises(nbcnn.OutOfMemoryError):
        cache.empty((16,), np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_backends_recognise_nbcnns_out_of_memory_error_and_not_others(device):
    backend = nbcnn.get_backend(device)
    assert backend.is_out_of_memory(nbcnn.OutOfMemoryError("x"))
    assert not backend.is_out_of_memory(RuntimeError("out of memory"))  # a message is not a class


def test_cuda_recognises_the_drivers_out_of_memory_error_by_its_code():
    """numba-cuda's real CudaAPIError (simulator off) carries the driver's CUresult."""
    out = fake_device.run("""
from cuda.bindings.driver import CUresult
from numba.cuda.cudadrv.driver import CudaAPIError
from nbcnn.cuda.array import is_out_of_memory
oom = CudaAPIError(CUresult.CUDA_ERROR_OUT_OF_MEMORY, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
other = CudaAPIError(CUresult.CUDA_ERROR_INVALID_VALUE, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
print(is_out_of_memory(oom), is_out_of_memory(other))
""")
    assert out.split() == ["True", "False"]


def test_other_allocation_errors_propagate_without_emptying_the_cache():
    def allocate(nbytes):
        if nbytes > 4096:
            raise RuntimeError("driver exploded")
        return np.empty(nbytes, np.uint8)
    cache = CachingAllocator(allocate, sys.getrefcount, np.empty)
    a = cache.empty((16,), np.float32)
    del a
    with pytest.raises(RuntimeError, match="driver exploded"):
        cache.empty((2048,), np.float32)
    assert cache.stats()["reserved_bytes"] == 512


def test_blocks_of_sizes_no_longer_asked_for_are_freed_at_the_next_allocation():
    cache = host_allocator(budget=1 << 30)
    old = cache.empty((1000,), np.float32)
    del old
    for _ in range(memory.STALE_REQUESTS + 1):
        cache.empty((10,), np.float32)  # hits on one 512-byte block: nothing allocated or freed
    assert cache.stats()["reserved_bytes"] == 512 + 4096
    new = cache.empty((3000,), np.float32)  # a miss: the 4096-byte block is stale by now
    assert cache.stats()["reserved_bytes"] == 512 + 12288
    del new


def test_blocks_whose_memory_was_freed_under_them_are_dropped():
    class Pointer:
        refct = 1

    class Block:
        """Stands in for a device array whose context was reset: its pointer proxy is dead."""
        def __init__(self, nbytes):
            self.ptr = Pointer()

        def users(self):
            if self.ptr is None:
                raise ReferenceError("weakly-referenced object no longer exists")
            return self.ptr.refct

        def __getitem__(self, s):
            return self

        def view(self, dtype):
            return self

        def reshape(self, shape):
            return self

    cache = CachingAllocator(Block, Block.users, np.empty)
    cache.empty((4,), np.float32).ptr = None  # the context reset
    before = cache.allocations
    cache.empty((4,), np.float32)
    assert cache.allocations == before + 1
    assert cache.stats()["reserved_bytes"] == 512


def test_device_arrays_count_their_views_the_way_the_allocator_expects():
    """On a GPU a block is busy while numba counts an owner of it: numba-cuda's real arrays (fake_device)."""
    out = fake_device.run("""
import numpy as np
from fake_device import address, allocations
from nbcnn.cuda import array

a = array.empty((4, 6), np.float32)
first, before = address(a), array.cache.allocations
views = [a[1:3], array.reshape(a, (24,)), array.flat(a).view(np.int32)]
del a
b = array.empty((4, 6), np.float32)
assert address(b) != first, "handed out while a slice, reshape or dtype view of it lived"
del b
views.pop()
views.pop()
c = array.empty((4, 6), np.float32)
assert address(c) != first, "handed out while a slice of it lived"
del views, c
d = array.empty((6, 4), np.float32)
assert address(d) == first, "an idle block was not reused"
assert array.cache.allocations == before + 1  # b and c shared the second block
del d
allocations.clear()  # cuda.close(): the context frees everything under the cache
e = array.empty((4, 6), np.float32)
assert address(e) != first, "a block freed by a context reset was handed out"
print("ok")
""")
    assert out.strip() == "ok"


def test_importing_fake_device_patches_nothing():
    """A real-GPU test run imports tests/fake_device.py too: only install() may touch numba."""
    from numba import cuda
    assert cuda.device_array.__module__ != "fake_device"


def test_empty_cache_returns_the_memory_to_the_driver_at_once():
    """numba batches frees; empty_cache flushes them, or the driver would still count the blocks as used."""
    out = fake_device.run("""
import numpy as np
from fake_device import context
from nbcnn.cuda import array
array.empty((1000,), np.float32)
array.empty_cache()
print(array.memory_stats()["reserved_bytes"], context.deallocations.flushes)
""")
    assert out.split() == ["0", "1"]
