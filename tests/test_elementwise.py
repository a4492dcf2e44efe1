"""nbcnn/elementwise.py: an element-wise op is a formula and a spec; each backend makes its kernel."""

import numpy as np
import pytest
from numba.extending import register_jitable

import nbcnn
from devices import DEVICES
from nbcnn.elementwise import Elementwise


@register_jitable
def test_axpby(x, y, a, b, i):
    """(a*x + b*y + i, x): two outputs, a scalar of each kind and the flat index."""
    return a * x + b * y + i, x


AXPBY = Elementwise("test_axpby", test_axpby, arrays=("x", "y", "out"), writes=("out", "y"))
test_axpby.__test__ = False  # a formula, not a pytest test


def test_an_ops_parameters_are_the_formulas_then_the_arrays_it_only_writes():
    assert AXPBY.params == ("x", "y", "a", "b", "out")


@pytest.mark.parametrize("device", DEVICES)
def test_a_new_op_is_one_formula_a_spec_and_one_line_per_backend(device):
    import importlib
    op = importlib.import_module(f"nbcnn.{device}.elementwise").elementwise(AXPBY)  # the one line
    be = nbcnn.get_backend(device)
    x, y = np.arange(6.0).reshape(2, 3), np.full((2, 3), 10.0)
    xd, yd, out = be.from_numpy(x), be.from_numpy(y), be.empty((2, 3), np.float64)
    op(xd, yd, np.float32(2.0), 3, out)  # numpy scalars are taken as Python numbers
    np.testing.assert_array_equal(be.to_numpy(out), 2 * x + 3 * y + np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(be.to_numpy(yd), x)  # written in place, after every read of y


@pytest.mark.parametrize("device", DEVICES)
def test_a_strided_array_is_refused_not_silently_copied(device):
    be = nbcnn.get_backend(device)
    a = be.zeros((4, 6), np.float32)
    with pytest.raises(ValueError):
        be.fill(a[:, :3], 7.0)  # flattening a strided view would copy it and fill the copy


PROBE = """
import sys
import numpy as np
sys.path.insert(0, {folder!r})
import probe_formula
from nbcnn.cpu.elementwise import elementwise
from nbcnn.elementwise import Elementwise
op = elementwise(Elementwise("probe", probe_formula.f, arrays=("x", "y"), writes=("y",)))
y = np.empty(3)
op(np.arange(3.0), y)
print(y.tolist())
"""


def test_an_edited_formula_never_runs_a_kernel_cached_for_the_old_one(tmp_path):
    """numba's disk cache keys a function by its name, bytecode and file stamp: the formula must be in the key."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    results = []
    for body in ("x * 2.0", "-x"):  # the same op name, generated source and backend file; another formula
        (tmp_path / "probe_formula.py").write_text(
            f"from numba.extending import register_jitable\n\n@register_jitable\ndef f(x):\n    return {body}\n")
        proc = subprocess.run([sys.executable, "-c", PROBE.format(folder=str(tmp_path))], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(proc.stdout.strip())
    assert results == ["[0.0, 2.0, 4.0]", "[-0.0, -1.0, -2.0]"]
