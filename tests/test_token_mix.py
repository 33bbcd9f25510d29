"""The fused token-mixing forward (kernels/token_mix.py) against fastmixer.reference.token_mix_ref.

Runs the compiled kernels on a GPU and the same kernels under the Triton interpreter on CPU (TRITON_INTERPRET=1, set
by conftest). Shapes are tiny but awkward: S = 36/49 (padded to 64), C = 40/72/100 (partial channel tiles), odd Dt,
batch 1 and 3. Both kernel structures are covered: the fused kernel (S <= 256) and the split route (S > 256: GEMM 1
writes H^T, GEMM 2 adds the epilogue), the latter forced at small S and run by default at S = 576 / 784 with small C
and Dt; each in both dtype routes, "mma" (tensor cores: fp16/bf16/tf32) and "fma" (fp32 at "ieee").

Tolerances:
  * fp32: max abs error <= 1e-5 against the fp32 reference at unit-scale inputs (measured ~1e-6).
  * fp16/bf16: the three-way rule err(ours vs fp32 oracle) <= 2 * err(torch in that dtype vs oracle) + atol, the oracle
    being the reference in fp32 on the very same (already rounded) inputs and weights.
  * bf16 under the interpreter: its tl.dot on bf16 returns garbage (triton issue 11584) and its fp32 -> bf16 cast
    truncates, so the kernels' helpers (_common.mma, _common.round_to; interpreter only) round to bf16 to nearest even
    by hand and upcast the dot operands, already rounded to bf16, to fp32 before tl.dot. That is what the GPU's bf16
    MMA computes (exact products of bf16 values, fp32 accumulation), so the bf16 test still covers the bf16 loads and
    stores, the LN and GELU roundings to bf16 and the fp32 epilogue; only the MMA instruction itself is not exercised
    on CPU (on GPU the helpers are a plain tl.dot and cast).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, INTERPRET
from helpers import assert_three_way, max_err

import fastmixer
from fastmixer.kernels import token_mix as tm
from fastmixer.mix_args import MixArgs
from fastmixer.reference import token_mix_ref

EPS = 1e-6
FP32_ATOL = 1e-5
SMALL_SHAPES = [(1, 36, 40, 17), (3, 49, 72, 24), (2, 49, 100, 1)]  # (B, S, C, Dt)


def make_inputs(B: int, S: int, C: int, Dt: int, *, scale: bool = False, gen_seed: int = 0) -> dict:
    """fp32 inputs on DEVICE, unit-scale x and activations (W1 ~ 1/sqrt(S), W2 ~ 1/sqrt(Dt)), non-trivial LN affine."""
    g = torch.Generator().manual_seed(gen_seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=g)).to(DEVICE)

    args = dict(
        x=rnd(B, S, C),
        ln_weight=rnd(C, std=0.1, mean=1.0),
        ln_bias=rnd(C, std=0.1),
        fc1_weight=rnd(Dt, S, std=S**-0.5),
        fc1_bias=rnd(Dt, std=0.1),
        fc2_weight=rnd(S, Dt, std=Dt**-0.5),
        fc2_bias=rnd(S, std=0.1),
        branch_scale=None,
    )
    if scale:  # stochastic depth: dropped samples get 0, kept ones 1/keep_prob
        args["branch_scale"] = torch.tensor([1 / 0.9, 0.0, 1 / 0.9][:B], device=DEVICE) if B > 1 else rnd(1).abs()
    return args


def cast(args: dict, x_dtype: torch.dtype, w_dtype: torch.dtype) -> dict:
    """x (and ln params, branch scale) in x_dtype, fc weights and biases in w_dtype."""
    out = {}
    for k, v in args.items():
        out[k] = None if v is None else v.to(w_dtype if k.startswith("fc") else x_dtype)
    return out


def upcast(args: dict) -> dict:
    return {k: None if v is None else v.float() for k, v in args.items()}


def run_ours(
    args: dict, *, route: str | None = None, allow_tf32: bool = False, split: bool | None = None
) -> torch.Tensor:
    return tm.token_mix_fwd(MixArgs(**args), eps=EPS, allow_tf32=allow_tf32, route=route, split=split)


def run_ref(args: dict) -> torch.Tensor:
    return token_mix_ref(**args, eps=EPS)


# ------------------------------------------------------------------------------------------------ fp32
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("route", ["mma", "fma"])
@pytest.mark.parametrize("scale", [False, True], ids=["noscale", "scale"])
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "B{}-S{}-C{}-Dt{}".format(*s))
def test_fp32_matches_reference(shape, scale, route, split):
    args = make_inputs(*shape, scale=scale)
    out = run_ours(args, route=route, split=split)
    ref = run_ref(args)
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    assert out.data_ptr() != args["x"].data_ptr()
    err = max_err(out, ref)
    assert err <= FP32_ATOL, f"max abs err {err:.3e} > {FP32_ATOL:.0e}"


def test_fp32_branch_scale_drops_branch():
    # A zero scale must return x exactly; a non-zero one must change it (the branch is not silently skipped).
    args = make_inputs(3, 49, 72, 24, scale=True)
    out = run_ours(args)
    assert torch.equal(out[1], args["x"][1])
    assert max_err(out[0], args["x"][0]) > 1e-2


def test_fp32_real_b16_block_shape():
    # One Mixer-B/16 token-mixing sub-block at its real shape (S=196 -> S_PAD 256, C=768, Dt=384). On GPU the fp32
    # default (FMA) route runs; under the interpreter the "mma" route (numerically identical there, the interpreter
    # ignores dot precision), since the FMA route's token K-split costs ~10x more interpreter steps at S=196: that
    # route is covered at small shapes above.
    args = make_inputs(1, 196, 768, 384)
    out = run_ours(args, route="mma" if INTERPRET else None)
    err = max_err(out, run_ref(args))
    assert err <= FP32_ATOL, f"max abs err {err:.3e} > {FP32_ATOL:.0e}"


@pytest.mark.parametrize("block_k", [1024, 256], ids=["whole-rows", "chunked"])
def test_stats_are_stable_with_large_mean(block_k):
    # Per-token mean 1e3, std 1: E[x^2] - E[x]^2 in fp32 would lose the variance (~6% error); neither the shifted
    # two-pass on whole rows (C = 600 in a 1024-wide masked tile: the launcher's stats_tile) nor the chunked Welford
    # merge (two 256 chunks and a masked 88 one: the route of rows wider than 2048) may.
    assert tm.stats_tile(600)["BLOCK_K"] == 1024 and tm.stats_tile(600)["WHOLE_ROWS"]
    g = torch.Generator().manual_seed(3)
    x = (1000.0 + torch.randn(2, 5, 600, generator=g)).to(DEVICE)
    stats = torch.empty((2, 10), dtype=torch.float32, device=DEVICE)
    whole = block_k >= 600  # 3 programs, the last masked
    tm._token_stats_kernel[(3,)](x, stats, 10, 600, EPS, BLOCK_R=4, BLOCK_K=block_k, WHOLE_ROWS=whole)
    x64 = x.double().view(10, 600)
    mean = x64.mean(-1)
    rstd = (x64.var(-1, unbiased=False) + EPS).rsqrt()
    assert torch.allclose(stats[0].double(), mean, rtol=0, atol=1e-4)
    assert torch.allclose(stats[1].double(), rstd, rtol=1e-4, atol=0)


# ------------------------------------------------------------------------------------------------ fp16 / bf16
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SMALL_SHAPES[:2], ids=lambda s: "B{}-S{}-C{}-Dt{}".format(*s))
def test_low_precision_three_way(shape, dtype, split):
    low = cast(make_inputs(*shape, scale=True), dtype, dtype)
    oracle = run_ref(upcast(low))  # fp32 math on the same rounded inputs
    ours = run_ours(low, split=split)
    theirs = run_ref(low)  # torch in the same dtype
    assert ours.dtype == dtype
    assert_three_way(ours, oracle, theirs, "op_eps", dtype)


@pytest.mark.skipif(not INTERPRET, reason="a GPU autotunes over every config itself")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("index", range(len(tm._fused_configs("mma", torch.bfloat16))))
def test_every_fused_config_three_way(index, dtype, monkeypatch):
    """Each 16-bit fused config a GPU may autotune to (the interpreter runs only the first): BLOCK_D 16 / 32 on 4
    warps, 32 on 8 (BLOCK_C 128 > C: masked channels), three-way at S = 36 and an odd hidden width (Dt 21: a partial
    BLOCK_D chunk in both dots)."""
    cfg = tm._fused_configs("mma", torch.bfloat16)[index]
    tuner = tm._FUSED["mma", False]
    monkeypatch.setattr(tuner, "configs", [cfg])
    low = cast(make_inputs(3, 36, 40, 21, scale=True), dtype, dtype)
    ours = run_ours(low, split=False)
    assert tuner.best_config is cfg  # this config ran
    assert_three_way(ours, run_ref(upcast(low)), run_ref(low), "op_eps", dtype)


@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_mixed_fp32_x_low_precision_weights(w_dtype):
    # The autocast case: fp32 residual stream, matmuls in w_dtype. torch reference under the same casts (LN output cast
    # to W, linears in W, residual add in fp32) vs ours, both measured against fp32 math on the same rounded weights.
    args = cast(make_inputs(3, 49, 72, 24, scale=True), torch.float32, w_dtype)
    oracle = run_ref(upcast(args))
    ours = run_ours(args)
    theirs = run_ref(args)
    assert ours.dtype == theirs.dtype == torch.float32
    assert_three_way(ours, oracle, theirs, "op_eps", w_dtype)


def contract_math(args: dict, w_dtype: torch.dtype, *, round_ln: bool = True, round_gelu: bool = True) -> torch.Tensor:
    """The launcher contract's rounding points in fp32 torch: LN output and GELU output rounded to W, everything else
    fp32 (x [B, S, C] fp32 -> [B, S, C] fp32). round_ln / round_gelu = False drop one rounding point (to show the test
    below tells them apart)."""
    a = upcast(args)
    y = F.layer_norm(a["x"], (a["x"].shape[-1],), a["ln_weight"], a["ln_bias"], EPS)
    y = (y.to(w_dtype).float() if round_ln else y).transpose(1, 2)  # [B, C, S]
    h = F.gelu(y @ a["fc1_weight"].T + a["fc1_bias"])  # [B, C, Dt]
    h = h.to(w_dtype).float() if round_gelu else h
    o = (h @ a["fc2_weight"].T + a["fc2_bias"]).transpose(1, 2)  # [B, S, C]
    s = a["branch_scale"]
    return a["x"] + (o if s is None else o * s.view(-1, 1, 1))


def mean_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_rounding_points_follow_contract(w_dtype, split):
    # fp32 x, W weights, fp32 output: no output rounding hides the intermediate casts. Ours must sit on the contract's
    # rounding points up to fp32 summation order: mean abs err ~1e-7 (measured 7e-7 fp16, 2e-7 bf16); the max allows a
    # few GELU-output roundings flipped by that order (one flip ~ ulp(h) * |W2| <= ~1e-3). Dropping either rounding
    # point, or truncating instead of rounding to nearest, moves the mean error to >= 7e-5.
    args = cast(make_inputs(3, 49, 72, 24, scale=True), torch.float32, w_dtype)
    want = contract_math(args, w_dtype)
    ours = run_ours(args, split=split)
    bound = 1e-5
    assert mean_err(ours, want) <= bound, f"mean abs err {mean_err(ours, want):.3e} off the contract's rounding points"
    assert max_err(ours, want) <= 2e-3
    for variant in (dict(round_ln=False), dict(round_gelu=False)):  # the check can tell a missing cast apart
        assert mean_err(contract_math(args, w_dtype, **variant), want) > 5 * bound, variant


# ------------------------------------------------------------------------------------------------ large token counts
# 384 / 448 px images at patch 16: S = 576 / 784 tokens take the split route by default (their padded strip exceeds
# the fused kernel's 256). Small C and Dt keep the interpreter fast; C = 40 leaves a partial channel tile, and
# 576 / 784 are not multiples of the 128-token tiles.
@pytest.mark.parametrize("route", ["mma", "fma"])
@pytest.mark.parametrize("S", [576, 784])
def test_large_token_counts_fp32(S, route):
    assert tm._is_split(S)
    args = make_inputs(2, S, 40, 24, scale=True)
    out = run_ours(args, route=route)
    err = max_err(out, run_ref(args))
    assert err <= FP32_ATOL, f"max abs err {err:.3e} > {FP32_ATOL:.0e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("S", [576, 784])
def test_large_token_counts_three_way(S, dtype):
    low = cast(make_inputs(1, S, 40, 24, scale=True), dtype, dtype)
    oracle = run_ref(upcast(low))
    assert_three_way(run_ours(low), oracle, run_ref(low), "op_eps", dtype)


def test_route_choice_by_token_count():
    # The fused kernel holds the whole padded token strip: up to 256 (S = 196 / 256 at 224 px); beyond, the split
    # route. Forcing the fused kernel past its limit is refused rather than built too large.
    assert not tm._is_split(1) and not tm._is_split(256) and tm._is_split(257) and tm._is_split(1024)
    with pytest.raises(ValueError, match="split route"):
        run_ours(make_inputs(1, 257, 8, 4), split=False)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_deterministic(split):
    # No atomics and a fixed reduction order: bitwise equal results on repeated calls.
    args = make_inputs(3, 49, 72, 24, scale=True)
    assert torch.equal(run_ours(args, split=split), run_ours(args, split=split))


# ------------------------------------------------------------------------------------------------ public op
def _op_args(args: dict) -> tuple:
    a = dict(args)
    x, scale = a.pop("x"), a.pop("branch_scale")
    return x, a, scale


@pytest.mark.usefixtures("triton_backend")
def test_public_op_triton_equals_reference_backend():
    args = make_inputs(3, 49, 72, 24, scale=True)
    x, weights, scale = _op_args(args)
    out = fastmixer.token_mix(x, **weights, eps=EPS, branch_scale=scale)
    with fastmixer.use_backend("reference"):
        ref = fastmixer.token_mix(x, **weights, eps=EPS, branch_scale=scale)
    assert max_err(out, ref) <= FP32_ATOL


@pytest.mark.usefixtures("triton_backend")
def test_public_op_non_contiguous_x():
    args = make_inputs(2, 36, 40, 17)
    _, weights, _ = _op_args(args)
    x = torch.randn(2, 40, 36, device=DEVICE).transpose(1, 2)  # [B, S, C] view with C strided
    assert not x.is_contiguous()
    out = fastmixer.token_mix(x, **weights, eps=EPS)
    err = max_err(out, token_mix_ref(x.contiguous(), **weights, eps=EPS))
    assert err <= FP32_ATOL


def test_opcheck_custom_op():
    args = make_inputs(2, 36, 40, 17, scale=True)
    for k in ("x", "ln_weight", "ln_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
        args[k].requires_grad_(True)
    x, weights, scale = _op_args(args)
    op_args = (x, *weights.values(), scale, EPS, False)
    torch.library.opcheck(torch.ops.fastmixer.token_mix.default, op_args)


# ------------------------------------------------------------------------------------------------ launcher contract
def test_empty_batch_launches_nothing():
    args = make_inputs(1, 36, 40, 17)
    args["x"] = args["x"][:0]
    out = run_ours(args)
    assert out.shape == (0, 36, 40)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.update(fc1_weight=a["fc1_weight"][:, :-1].contiguous()), ValueError, "fc1_weight"),
        (lambda a: a.update(fc2_bias=a["fc2_bias"][:-1]), ValueError, "fc2_bias"),
        (lambda a: a.update(branch_scale=torch.ones(5, device=DEVICE)), ValueError, "branch_scale"),
        (lambda a: a.update(x=a["x"].to(torch.int32)), TypeError, "x must be floating point"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "x must be float32/float16/bfloat16 .*reference path"),
        (lambda a: a.update(fc2_weight=a["fc2_weight"].half()), TypeError, "fc2_weight must have fc1_weight's dtype"),
        (lambda a: a.update(ln_bias=a["ln_bias"].double()), TypeError, "ln_bias is torch.float64"),
    ],
    ids=["fc1-shape", "fc2b-shape", "scale-shape", "int-x", "fp64-x", "w-dtypes", "fp64-ln"],
)
def test_launcher_rejects_bad_input(mutate, exc, match):
    # The launcher runs the shared contract (fastmixer.mix_args) with the kernels' dtypes; tests/test_dtype_contract.py
    # covers every refusal at the public ops on both backends.
    args = make_inputs(3, 36, 40, 17)
    mutate(args)
    with pytest.raises(exc, match=match):
        run_ours(args)


def test_launcher_takes_strided_and_mixed_dtype_inputs():
    # Non-dense x / ln_weight are copied dense; fp16 x with fp32 weights (any mix the seam can hand over) runs, in
    # promote(X, W) = fp32, on the fp16-rounded x.
    args = make_inputs(3, 36, 40, 17)
    strided = dict(args, x=args["x"].transpose(1, 2).contiguous().transpose(1, 2))
    strided["ln_weight"] = torch.stack([args["ln_weight"], args["ln_weight"]], 1)[:, 0]
    assert not strided["x"].is_contiguous() and not strided["ln_weight"].is_contiguous()
    assert max_err(run_ours(strided), run_ref(args)) <= FP32_ATOL
    mixed = dict(args, x=args["x"].half())
    out = run_ours(mixed)
    assert out.dtype == torch.float32
    assert max_err(out, run_ref(dict(args, x=mixed["x"].float()))) <= FP32_ATOL


def test_launcher_rejects_unknown_route():
    with pytest.raises(ValueError, match="route"):
        run_ours(make_inputs(1, 36, 40, 17), route="wgmma")
