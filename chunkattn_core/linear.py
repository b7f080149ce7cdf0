"""Linear layers of the model. A decode step multiplies a few rows by each weight, which on the CPU
is bound by reading the weight from memory; the native small-batch kernel streams it at close to
memory bandwidth (torch's fp32 GEMM reaches about a third of it for one row here). Every other case
is torch's F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chunkattn_core._native import _C

MAX_SMALL_BATCH_ROWS = 8


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [rows, k] @ weight [n, k]^T -> [rows, n]."""
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 2
        and 1 <= x.shape[0] <= MAX_SMALL_BATCH_ROWS
        and weight.shape[1] % 8 == 0
        and weight.is_contiguous()
    ):
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
        _C.small_batch_linear(x.contiguous(), weight, out, torch.get_num_threads())
        return out
    return F.linear(x, weight)


class Linear(nn.Linear):
    """nn.Linear without bias whose forward is `linear`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)
