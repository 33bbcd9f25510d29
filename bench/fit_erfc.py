"""Fit of the normal tail behind the kernels' exact GELU (kernels/_common.py: ERFC_P, ERFC_COEFFS).

    Phi(-u) = erfc(u / sqrt 2) / 2 = t P(t) exp(-u^2 / 2),  t = 1 / (1 + p u),  u = |a| >= 0,
    P(t) = c0 + c1 t + ... + c7 t^7

g(u) = Phi(-u) exp(u^2 / 2) is smooth in t on (0, 1]; P is fitted to g / t in *relative* error (Lawson's iteratively
reweighted least squares, a near-minimax fit) on 4000 Chebyshev nodes in t for u in [0, 6 sqrt 2], float64
(math.erfc), and p is scanned on a grid. Prints p, the coefficients as fp32 literals and the fit's max relative
error, then the fp32 GELU error of the kernel's formula (numpy fp32 emulation, exact division and exp) and of
torch's fp32 GELU against float64 on a dense grid: `python bench/fit_erfc.py`. numpy (and torch, if installed); a few
seconds.
"""

from __future__ import annotations

import math

import numpy as np

DEGREE = 8  # coefficients
U_MAX = 6.0 * math.sqrt(2.0)  # beyond, Phi(-u) < 1.1e-17: a Phi(a) < 1e-16 for a < -8.5, Phi(a) rounds to 1 above 8.5


def _g(u: np.ndarray) -> np.ndarray:
    return np.array([0.5 * math.erfc(v / math.sqrt(2.0)) * math.exp(0.5 * v * v) for v in u])


def fit(p: float, n: int = DEGREE, u_max: float = U_MAX, iters: int = 60) -> tuple[np.ndarray, float]:
    """(coefficients c0..c_{n-1}, max relative error of t P(t) against g) for this p."""
    t_min = 1.0 / (1.0 + p * u_max)
    k = np.arange(4000)
    t = t_min + (1 - t_min) * (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / len(k)))
    y = _g((1.0 / t - 1.0) / p)
    a = np.stack([t ** (j + 1) for j in range(n)], 1) / y[:, None]  # rows: (t P(t)) / g, linear in c
    w = np.ones(len(t))
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(a * sw[:, None], sw, rcond=None)
        r = np.abs(a @ c - 1.0)
        w = w * r / (w * r).sum()
    return c, float(r.max())


# PTX's documented worst-case relative errors of the GPU's approximations (rcp.approx.ftz.f32: 1 ulp; ex2.approx:
# 2^-22.5 ~ 2 ulp): gelu_fp32(..., rcp_err=, ex2_err=) scales t and exp2's result by (1 + err) to bound the GPU's form.
RCP_ERR = 2.0**-23
EX2_ERR = 2.0**-22.5


def gelu_fp32(x: np.ndarray, p: np.float32, c: np.ndarray, rcp_err: float = 0.0, ex2_err: float = 0.0) -> np.ndarray:
    """The kernel's formula (kernels/_common.py: _phi_and_pdf, gelu_erf) in fp32: exact division and exp2, or with t
    and exp2's result off by the relative errors given (the GPU's rcp.approx / ex2.approx at their documented worst)."""
    x = x.astype(np.float32)
    t = (np.float32(1) / (np.float32(1) + p * np.abs(x)) * np.float32(1 + rcp_err)).astype(np.float32)
    poly = c[-1]
    for cc in c[-2::-1]:
        poly = poly * t + cc
    e = (np.exp2(x * x * np.float32(-0.5 * math.log2(math.e))) * np.float32(1 + ex2_err)).astype(np.float32)
    q = (t * poly) * e  # Phi(-|x|)
    return x * np.where(x >= 0, np.float32(1) - q, q)


def main() -> None:
    err, p = min((fit(p, iters=20)[1], p) for p in np.linspace(0.21, 0.26, 26))
    c, err = fit(p)
    p32, c32 = np.float32(p), c.astype(np.float32)
    print(f"p = {float(p32)!r}\ncoefficients c0..c{DEGREE - 1} = {[float(v) for v in c32]}")
    u = np.linspace(0.0, U_MAX, 20001)
    t = 1.0 / (1.0 + float(p32) * u)
    err32 = np.abs(t * np.polyval(c32.astype(np.float64)[::-1], t) / _g(u) - 1.0).max()
    print(f"fit: max relative error of Phi(-u) on u in [0, {U_MAX:.3f}]: {err:.3g} ({err32:.3g} with fp32 p, c)")
    x = np.concatenate([np.linspace(-10, 10, 2_000_001, dtype=np.float32), *(s * np.logspace(-8, 1.3, 100_001,
                        dtype=np.float32) for s in (1, -1))])  # fmt: skip
    x64 = x.astype(np.float64)
    want = x64 * 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in x64])
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    rows = [("kernel formula", gelu_fp32(x, p32, c32).astype(np.float64))]
    for sr, se in ((1, 1), (1, -1), (-1, 1), (-1, -1)):  # the GPU's approximations at their worst, each sign
        gpu = gelu_fp32(x, p32, c32, rcp_err=sr * RCP_ERR, ex2_err=se * EX2_ERR).astype(np.float64)
        rows.append((f"kernel formula, rcp {sr:+d} ulp, ex2 {se * 2:+d} ulp", gpu))
    try:
        import torch

        rows.append(("torch fp32 GELU", torch.nn.functional.gelu(torch.from_numpy(x)).double().numpy()))
    except ImportError:
        pass
    for name, got in rows:
        e = np.abs(got - want)
        for lo, hi in ((-3, 10), (-6, -3), (-10, -6)):
            m = (x64 >= lo) & (x64 < hi)
            print(f"{name}, x in [{lo}, {hi}): max {(e[m] / ulp[m]).max():.4g} ulp, max abs {e[m].max():.3g}")


if __name__ == "__main__":
    main()
