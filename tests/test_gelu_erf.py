"""The kernels' exact GELU (kernels/_common.py: Phi(-|a|) = t P(t) exp(-a^2 / 2), fitted by bench/fit_erfc.py) against
float64, with torch's own fp32 GELU on the same arguments as the yardstick: the kernels may differ from torch by
rounding, never by more than torch differs from the exact function."""

import math
import os
import sys

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE

from fastmixer.kernels import _common

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import fit_erfc


@triton.jit
def _gelu_erf_probe(A, OUT, GRAD, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(A + offs, mask=mask, other=0.0)
    h, d = _common.gelu_and_grad(a, "gelu")
    tl.store(OUT + offs, h, mask=mask)
    tl.store(GRAD + offs, d, mask=mask)


def _want(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 GELU(a) = a Phi(a) and GELU'(a) = Phi(a) + a phi(a)."""
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in a])
    return a * cdf, cdf + a * np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)


def test_fit_constants_reproduce_the_fit():
    """ERFC_P / ERFC_COEFFS fit g(u) = Phi(-u) exp(u^2 / 2) within 1e-7 relative on u in [0, 8.5] (float64
    evaluation; 6.8e-8 with these fp32 constants): a mistyped or reordered coefficient fails this."""
    p, c = _common.ERFC_P.value, np.array(_common.ERFC_COEFFS)
    u = np.linspace(0.0, fit_erfc.U_MAX, 20001)
    t = 1.0 / (1.0 + p * u)
    got = t * np.polyval(c[::-1], t)
    rel = np.abs(got / fit_erfc._g(u) - 1.0).max()
    assert rel <= 1e-7, rel
    bad = c.copy()
    bad[3] *= 1.001
    assert np.abs(t * np.polyval(bad[::-1], t) / fit_erfc._g(u) - 1.0).max() > 1e-5  # the bound can fail


def test_kernel_gelu_erf_within_torch_error():
    """The jit helper (interpreted on CPU, compiled on a GPU) on a dense fp32 grid over [-10, 10] plus magnitudes
    1e-8..20: value within 12 ulp of float64 where a >= -3 and 4e-9 absolute below (torch fp32: 546 ulp and 2.6e-7);
    derivative within 3e-7 absolute (torch's fp32 autograd: 2.6e-7)."""
    a = np.concatenate(
        [np.linspace(-10, 10, 400_001, dtype=np.float32), np.logspace(-8, 1.3, 20_001, dtype=np.float32)]
    )
    a = np.concatenate([a, -a[400_001:]])
    x = torch.from_numpy(a).to(DEVICE)
    out, grad = torch.empty_like(x), torch.empty_like(x)
    _gelu_erf_probe[(triton.cdiv(x.numel(), 4096),)](x, out, grad, x.numel(), BLOCK=4096)
    a64 = a.astype(np.float64)
    want, want_grad = _want(a64)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    xt = torch.from_numpy(a).requires_grad_(True)
    torch_val = torch.nn.functional.gelu(xt)
    (torch_grad,) = torch.autograd.grad(torch_val.sum(), xt)
    hi = a64 >= -3
    rows = {}
    for name, v, g in (("kernel", out.cpu().double().numpy(), grad.cpu().double().numpy()),
                       ("torch", torch_val.detach().double().numpy(), torch_grad.double().numpy())):  # fmt: skip
        e = np.abs(v - want)
        rows[name] = ((e[hi] / ulp[hi]).max(), e[~hi].max(), np.abs(g - want_grad).max())
        print(f"{name} fp32 GELU vs float64: {rows[name][0]:.3g} ulp (a >= -3), {rows[name][1]:.3g} abs (a < -3), "
              f"derivative {rows[name][2]:.3g} abs")  # fmt: skip
    ulps, low_abs, grad_abs = rows["kernel"]
    assert ulps <= 12 and low_abs <= 4e-9 and grad_abs <= 3e-7, rows["kernel"]
    assert rows["torch"][0] > ulps and rows["torch"][1] > low_abs  # torch is the looser of the two here


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy at a = +-inf
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # -inf * 0 = NaN, as torch's
def test_kernel_gelu_erf_extremes():
    """+-inf, +-3e38, +-0, NaN: GELU(+inf) = inf, GELU(-3e38) = -0 (torch: -0 too), NaN stays NaN; the derivative
    is 1 / 0 at the ends, never NaN for finite a."""
    a = torch.tensor([float("inf"), 3e38, 1e4, 0.0, -0.0, -1e4, -3e38, float("-inf"), float("nan")], device=DEVICE)
    out, grad = torch.empty_like(a), torch.empty_like(a)
    _gelu_erf_probe[(1,)](a, out, grad, a.numel(), BLOCK=16)
    want = torch.nn.functional.gelu(a.cpu())
    finite = torch.isfinite(a.cpu())
    assert torch.equal(out.cpu()[finite], want[finite]), (out, want)
    assert out[0] == float("inf") and torch.isnan(out[-1])
    assert torch.equal(grad.cpu()[1:7], torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0, 0.0]))


def test_gpu_approximations_keep_the_bound():
    """The GPU computes t with rcp.approx.ftz (1 ulp) and exp(-a^2 / 2) with ex2.approx.ftz (2 ulp): the formula with
    t and exp2's result off by those documented worst cases, either sign (bench/fit_erfc.gelu_fp32, fp32 numpy), stays
    within 18 ulp of float64 for a >= -3 and 4.5e-9 absolute below, still far inside torch's own fp32 error."""
    small = np.logspace(-8, 1.3, 10_001, dtype=np.float32)
    a = np.concatenate([np.linspace(-10, 10, 200_001, dtype=np.float32), small, -small])
    a64 = a.astype(np.float64)
    want, _ = _want(a64)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    hi = a64 >= -3
    p, c = np.float32(_common.ERFC_P.value), np.array(_common.ERFC_COEFFS, dtype=np.float32)
    worst = (0.0, 0.0)
    for sr in (1, -1):
        for se in (1, -1):
            got = fit_erfc.gelu_fp32(a, p, c, rcp_err=sr * fit_erfc.RCP_ERR, ex2_err=se * fit_erfc.EX2_ERR)
            e = np.abs(got.astype(np.float64) - want)
            worst = (max(worst[0], (e[hi] / ulp[hi]).max()), max(worst[1], e[~hi].max()))
    print(f"GPU approximations at their worst: {worst[0]:.3g} ulp (a >= -3), {worst[1]:.3g} abs (a < -3)")
    assert worst[0] <= 18 and worst[1] <= 4.5e-9, worst
    exact = fit_erfc.gelu_fp32(a, p, c).astype(np.float64)
    assert (np.abs(exact - want)[hi] / ulp[hi]).max() < worst[0]  # the perturbation moves the result (non-vacuous)
