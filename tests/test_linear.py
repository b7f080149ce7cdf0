"""The model's linear layer: the native small-batch kernel against a float64 reference."""

import pytest
import torch
import torch.nn.functional as F

from chunkattn_core._native import _C
from chunkattn_core.linear import MAX_SMALL_BATCH_ROWS, Linear, linear


@pytest.mark.parametrize("rows", range(1, MAX_SMALL_BATCH_ROWS + 1))
@pytest.mark.parametrize("n, k", [(1, 8), (7, 64), (960, 576), (577, 1536)])
def test_small_batch_matches_float64_reference(rows, n, k):
    gen = torch.Generator().manual_seed(rows * 1000 + n)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    expected = (x.double() @ w.double().T).float()
    torch.testing.assert_close(linear(x, w), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "x, w",
    [
        (torch.randn(9, 64), torch.randn(5, 64)),  # too many rows for the small-batch kernel
        (torch.randn(2, 12), torch.randn(5, 12)),  # k not a multiple of 8
        (torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(5, 64, dtype=torch.bfloat16)),
        (torch.randn(2, 64), torch.randn(64, 5).T),  # weight not contiguous
    ],
)
def test_other_shapes_fall_back_to_torch(x, w):
    torch.testing.assert_close(linear(x, w), F.linear(x, w))


def test_linear_module_has_no_bias_and_uses_the_kernel():
    layer = Linear(16, 3)
    assert layer.bias is None
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), x @ layer.weight.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "x, w, out, error",
    [
        (torch.randn(0, 8), torch.randn(4, 8), torch.empty(0, 4), "1 to 8 rows"),
        (torch.randn(2, 8), torch.randn(4, 16), torch.empty(2, 4), "multiple of 8"),
        (torch.randn(2, 8), torch.randn(4, 8), torch.empty(2, 5), "out must be"),
        (torch.randn(2, 8).double(), torch.randn(4, 8).double(), torch.empty(2, 4).double(), "float32"),
    ],
)
def test_native_entry_point_rejects_bad_input(x, w, out, error):
    with pytest.raises(RuntimeError, match=error):
        _C.small_batch_linear(x, w, out, 1)
