"""Helpers shared by the Triton kernels: exact and tanh GELU, the tensor-core dot and the interpreter's workarounds,
dot precision, autotune config selection.

Interpreter switch, in one place. Under TRITON_INTERPRET=1 kernels run on CPU through numpy: multi-config autotune
fails there ("0 active drivers"), bf16 tl.dot returns garbage (triton issue 11584) and the fp32 -> bf16 cast truncates.
`INTERPRET` (Python) is read once, before triton is imported; `_INTERPRET_JIT` is the same value as a global
tl.constexpr for jit code: Triton adds constexpr globals to each caller's JIT cache key, and it is False in every GPU
process (and in the AOT build worker, tests/aot.py, which runs with TRITON_INTERPRET unset). Kernels never read it:
they call `mma` and `round_to`, which are plain tl.dot / casts on GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_INTERPRET_JIT = tl.constexpr(INTERPRET)


# ------------------------------------------------------------------------------------------------ dot and rounding
@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation (acc None: a @ b): tl.dot with input_precision=PRECISION ("ieee" | "tf32",
    which matters for fp32 operands only). Under the interpreter, bf16 operands (or an fp32 one holding bf16 values,
    from round_to) are upcast to fp32 and multiplied at "ieee": exact products of the bf16 values and fp32
    accumulation, what the GPU's bf16 MMA computes."""
    if _INTERPRET_JIT and (a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16):
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def round_to(v, DTYPE: tl.constexpr):
    """fp32 v rounded to DTYPE to nearest even, as torch rounds: v.to(DTYPE) on GPU. Under the interpreter with DTYPE
    bf16 (whose cast truncates): fp32 holding the RTNE bf16 value of v, bits + 0x7FFF + (bit 16) with the low 16 bits
    cleared; its later cast to bf16 (a store) is then exact, and mma takes it as a bf16 operand."""
    if _INTERPRET_JIT and DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16 << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return v.to(DTYPE)


def dot_precision(allow_tf32: bool, dtype: torch.dtype) -> str:
    """tl.dot input_precision (the kernels' PRECISION): "tf32" only for fp32 operands when torch's fp32 matmul precision
    allows it."""
    return "tf32" if allow_tf32 and dtype == torch.float32 else "ieee"


def keep_configs(configs: list[triton.Config], kept: list[triton.Config]) -> list[triton.Config]:
    """An autotuner's early_config_prune result: its configs that are in `kept` (the ones a launch may autotune over),
    or its first one when none is (under the interpreter only the first is listed)."""
    return [c for c in configs if c in kept] or configs[:1]


def pick_configs(configs: list[triton.Config]) -> list[triton.Config]:
    """All configs on a GPU; under the interpreter only the first (by convention the conservative one that always
    fits)."""
    return configs[:1] if INTERPRET else configs


# ------------------------------------------------------------------------------------------------ GELU
@triton.jit
def gelu_erf(a):
    """Exact GELU on fp32 `a`: 0.5 * a * (1 + erf(a / sqrt 2)) (timm's nn.GELU, approximate='none')."""
    return 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))


# tanh-approximate GELU (nn.GELU(approximate="tanh"), Flax's default), with u = k (a + c a^3), k = sqrt(2/pi),
# c = 0.044715:   GELU(a) = 0.5 a (1 + tanh u) = a * sigmoid(2u)
#                 GELU'(a) = sig + 2 a sig (1 - sig) k (1 + 3 c a^2),   sig = sigmoid(2u)
# sig = 1 / (1 + e), e = exp(-2u) clamped at exp(80) and sig = 0 below 2u = -80, so 1 - sig = e * sig and the derivative
# term stay finite for any fp32 a (a^3 may overflow to inf: the clamp and a clamped a in the slope keep inf * 0 out).
# No cancellation near a = 0 or for large |a| (torch's 1 + tanh u loses digits as u -> -inf; this form does not).
@triton.jit
def _gelu_tanh_sig(a):
    """(sig, 1 - sig) of fp32 `a`, sig = sigmoid(2 k (a + c a^3)) = 0.5 (1 + tanh u)."""
    u2 = 1.5957691216057308 * (a + 0.044715 * a * a * a)  # 2u
    e = tl.exp(tl.minimum(-u2, 80.0))
    sig = tl.where(u2 < -80.0, 0.0, 1.0 / (1.0 + e))
    return sig, e * sig


@triton.jit
def gelu(a, ACT: tl.constexpr):
    """GELU of fp32 `a`: ACT = "gelu" (exact erf) or "gelu_tanh" (tanh approximation)."""
    if ACT == "gelu_tanh":
        sig, _ = _gelu_tanh_sig(a)
        return a * sig
    else:
        return gelu_erf(a)


@triton.jit
def gelu_and_grad(a, ACT: tl.constexpr):
    """(GELU(a), GELU'(a)) of fp32 `a` for ACT = "gelu" (one erf shared) or "gelu_tanh" (one exp shared)."""
    if ACT == "gelu_tanh":
        sig, one_minus = _gelu_tanh_sig(a)
        ac = tl.minimum(tl.maximum(a, -1.0e4), 1.0e4)  # sig (1 - sig) is exactly 0 long before |a| = 1e4
        slope = 1.5957691216057308 * (1.0 + 0.134145 * ac * ac)  # 2u' = 2k (1 + 3c a^2)
        return a * sig, sig + a * (sig * one_minus) * slope
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))  # Phi(a): GELU = a Phi(a), GELU' = Phi + a phi(a)
        return a * cdf, cdf + a * tl.exp(-0.5 * a * a) * 0.3989422804014327
