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
