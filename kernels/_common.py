"""Helpers shared by the Triton kernels: exact and tanh GELU, the tensor-core dot and the interpreter's workarounds,
dot precision, autotune config selection.

Interpreter switch, in one place. Under TRITON_INTERPRET=1 kernels run on CPU through numpy: multi-config autotune
fails there ("0 active drivers"), bf16 tl.dot returns garbage (triton issue 11584), the fp32 -> bf16 cast truncates
and inline PTX cannot run.
`INTERPRET` (Python) is read once, before triton is imported; `_INTERPRET_JIT` is the same value as a global
tl.constexpr for jit code: Triton adds constexpr globals to each caller's JIT cache key, and it is False in every GPU
process (and in the AOT build worker, tests/aot.py, which runs with TRITON_INTERPRET unset). Kernels never read it:
they call `mma`, `round_to` and the GELU helpers (`_fast_rcp`, `_fast_exp2`), which are plain tl.dot / casts / one
MUFU instruction on GPU.
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
# Exact GELU (timm's nn.GELU, approximate='none'): GELU(a) = a Phi(a), GELU'(a) = Phi(a) + a phi(a), with
# Phi(a) = 0.5 erfc(-a / sqrt 2) and phi(a) = exp(-a^2 / 2) / sqrt(2 pi), through one form for every a:
#   Phi(-u) = t P(t) exp(-u^2 / 2),  u = |a|,  t = 1 / (1 + ERFC_P u),  P(t) = sum_j ERFC_COEFFS[j] t^j
#   Phi(a) = 1 - Phi(-u) (a >= 0)  or  Phi(-u) (a < 0);   exp(-a^2 / 2) = sqrt(2 pi) phi(a) is shared by GELU'.
# P is a relative fit on u in [0, 8.5] (bench/fit_erfc.py: max relative error 6.8e-8 in Phi(-u) with these fp32
# constants), so GELU(a) keeps its relative accuracy for negative a too. fp32 GELU vs float64 on a dense grid over
# [-10, 10]: within 9.6 ulp for a >= -3 and 2.6e-9 absolute below (numpy emulation, exact division and exp; the
# interpreted kernel in tests/test_gelu_erf.py: 9.1 ulp, 2.5e-9; with t and exp2 off by the GPU's rcp.approx /
# ex2.approx documented worst case, 1 and 2 ulp, either sign: 16.8 ulp, 4.0e-9), where torch's own fp32 GELU,
# 0.5 a (1 + erf(a / sqrt 2)), is off by up to 546 ulp (a >= -3) and 2.6e-7 absolute (its 1 + erf cancels).
# sm_90 SASS per element: 8 FFMA/FMUL for P, two MUFU (rcp, ex2), ~8 more; libdevice's erff (the previous form)
# computes two polynomials per element and selects their coefficients through registers: 430 -> 321 instructions per
# step of the fused token kernel's main loop (bf16, 8 GELUs per thread).
ERFC_P: tl.constexpr = tl.constexpr(0.2280000001192093)
_E0: tl.constexpr = tl.constexpr(0.09130217134952545)
_E1: tl.constexpr = tl.constexpr(0.0857882872223854)
_E2: tl.constexpr = tl.constexpr(0.119728222489357)
_E3: tl.constexpr = tl.constexpr(-0.04482603073120117)
_E4: tl.constexpr = tl.constexpr(0.3321940302848816)
_E5: tl.constexpr = tl.constexpr(-0.31795254349708557)
_E6: tl.constexpr = tl.constexpr(0.3163965046405792)
_E7: tl.constexpr = tl.constexpr(-0.08263062685728073)
ERFC_COEFFS = tuple(c.value for c in (_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7))  # c0..c7 (tests, bench/fit_erfc.py)


@triton.jit
def _fast_rcp(x):
    """1 / x for fp32 x in [2^-126, 2^126]: one MUFU.RCP on GPU (rcp.approx.ftz, max relative error 2^-23; `1.0 / x`
    compiles to div.full with ~7 range-scaling instructions around it); exact division under the interpreter."""
    if _INTERPRET_JIT:
        return 1.0 / x
    else:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )


@triton.jit
def _fast_exp2(x):
    """2^x for fp32 x, results below 2^-126 flushed to 0: one MUFU.EX2 on GPU (ex2.approx.ftz, max relative error
    2^-22; tl.exp adds ~4 denormal-range instructions); numpy's exp2 under the interpreter."""
    if _INTERPRET_JIT:
        return tl.exp2(x)
    else:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )


@triton.jit
def _phi_and_pdf(a):
    """(Phi(a), exp(-a^2 / 2)) of fp32 `a` (the form above). u is capped at 22 (Phi(-22) ~ 1e-107: t P(t) e = 0
    either way) so that 1 + ERFC_P u stays in _fast_rcp's range for any a, +-inf included; exp(-a^2 / 2) flushes to 0
    for |a| > 13.2 (torch's fp32 1 + erf(a / sqrt 2) is 0 already below a = -5.5)."""
    u = tl.minimum(tl.abs(a), 22.0)
    t = _fast_rcp(1.0 + ERFC_P * u)
    p = ((((((_E7 * t + _E6) * t + _E5) * t + _E4) * t + _E3) * t + _E2) * t + _E1) * t + _E0  # P(t), Horner
    e = _fast_exp2(a * a * -0.7213475204444817)  # exp(-a^2 / 2) = 2^(-a^2 log2(e) / 2)
    q = t * p * e  # Phi(-u)
    return tl.where(a >= 0, 1.0 - q, q), e


@triton.jit
def gelu_erf(a):
    """Exact GELU on fp32 `a`: a Phi(a) = 0.5 a (1 + erf(a / sqrt 2)) (timm's nn.GELU, approximate='none')."""
    cdf, _ = _phi_and_pdf(a)
    return a * cdf


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
        cdf, e = _phi_and_pdf(a)  # GELU = a Phi(a), GELU' = Phi(a) + a phi(a), phi(a) = e / sqrt(2 pi)
        return a * cdf, cdf + a * e * 0.3989422804014327
