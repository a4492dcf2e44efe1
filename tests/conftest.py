import os

# The CUDA backend runs under numba's simulator unless a real GPU run is asked for; numba
# reads this once, at its first import, so it must come before anything imports numba.
if os.environ.get("NBCNN_TEST_GPU", "0") == "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
else:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Every array the allocators hand out starts as NaN (nbcnn/memory.py), so a kernel that
# reads memory it never wrote fails its test instead of passing on zeroed pages.
os.environ.setdefault("NBCNN_POISON_MEMORY", "1")

from hypothesis import settings  # noqa: E402

# CI draws the same examples every run, so a red build always reproduces; locally, new
# examples every run keep looking for edge cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
