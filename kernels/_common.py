"""Helpers shared by the Triton kernels: exact GELU, dot precision, autotune config selection."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 kernels run on CPU through numpy: multi-config autotune fails there ("0 active drivers")
# and bf16 tl.dot returns garbage (triton issue 11584), so launchers keep one config and tests avoid bf16 dots.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def gelu_erf(a):
    """Exact GELU on fp32 `a`: 0.5 * a * (1 + erf(a / sqrt 2)) (timm's nn.GELU, approximate='none')."""
    return 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))


@triton.jit
def gelu_erf_grad(a):
    """d GELU / da on fp32 `a`: Phi(a) + a * phi(a)."""
    return 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476)) + a * tl.exp(-0.5 * a * a) * 0.3989422804014327


def dot_precision(allow_tf32: bool, dtype: torch.dtype) -> str:
    """tl.dot input_precision: "tf32" only for fp32 operands when torch's fp32 matmul precision allows it."""
    return "tf32" if allow_tf32 and dtype == torch.float32 else "ieee"


def pick_configs(configs: list[triton.Config]) -> list[triton.Config]:
    """All configs on a GPU; under the interpreter only the first (by convention the conservative one that always
    fits)."""
    return configs[:1] if INTERPRET else configs


def torch_dtype_to_tl(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]
