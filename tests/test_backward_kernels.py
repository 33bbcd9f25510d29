"""Triton backward kernels of token_mix / channel_mix (kernels/token_mix_bwd.py, kernels/channel_mix_bwd.py).

Oracles: fastmixer.reference.mix_backward_ref (closed-form fp32 math) and torch autograd through
reference.token_mix_ref / channel_mix_ref. On CPU the kernels run under the Triton interpreter (tests/conftest.py), so
shapes are tiny but awkward: S = 36/49, C = 40/72 (not powers of two), odd hidden dims, batch 1 and 3."""

import pytest
import torch
from conftest import DEVICE, INTERPRET
from helpers import assert_three_way, max_err

from fastmixer import reference
from fastmixer.kernels.channel_mix_bwd import channel_mix_bwd
from fastmixer.kernels.token_mix_bwd import token_mix_bwd
from fastmixer.mix_args import MixArgs

NAMES = ("dx", "d_ln_weight", "d_ln_bias", "d_fc1_weight", "d_fc1_bias", "d_fc2_weight", "d_fc2_bias")
BWD = {"token": token_mix_bwd, "channel": channel_mix_bwd}
REF = {"token": reference.token_mix_ref, "channel": reference.channel_mix_ref}
EPS = 1e-6
# (B, S, C, Dt, Dc): batch 1 and 3, S = 49/36, C = 72/40, odd hidden dims.
SHAPES = [(1, 49, 72, 25, 99), (3, 36, 40, 21, 75)]


def make_case(kind, shape, x_dtype=torch.float32, w_dtype=None, scale=False):
    """(dout, x, params[6], branch_scale): params in (ln_weight, ln_bias, fc1_w, fc1_b, fc2_w, fc2_b) order; LN
    params fp32, MLP params in w_dtype; dout in promote(x, w) as the forward's output would be."""
    w_dtype = w_dtype or x_dtype
    B, S, C, Dt, Dc = shape
    n, d = (S, Dt) if kind == "token" else (C, Dc)
    g = torch.Generator().manual_seed(sum(shape) + len(kind))
    r = lambda *s: torch.randn(*s, generator=g)
    x = (r(B, S, C) + 0.5).to(DEVICE, x_dtype)
    ln = [(1 + 0.1 * r(C)).to(DEVICE), (0.1 * r(C)).to(DEVICE)]
    mlp = [r(d, n) / n**0.5, 0.1 * r(d), r(n, d) / d**0.5, 0.1 * r(n)]
    params = ln + [t.to(DEVICE, w_dtype) for t in mlp]
    dout = r(B, S, C).to(DEVICE, torch.promote_types(x_dtype, w_dtype))
    bs = torch.tensor([1.25, 0.0, 1.25][:B] if B > 1 else [1.25], device=DEVICE) if scale else None
    return dout, x, params, bs


def ours(kind, dout, x, params, bs):
    return BWD[kind](dout, MixArgs(x, *params, bs), eps=EPS, allow_tf32=False)


def closed_form(kind, dout, x, params, bs):
    """fp32 oracle on the fp32 values of the (possibly rounded) inputs."""
    grads = reference.mix_backward_ref(
        kind, dout.float(), x.float(), *(p.float() for p in params), eps=EPS, branch_scale=bs
    )
    return [gr.float() for gr in grads]


def torch_autograd(kind, dout, x, params, bs):
    """Gradients of the reference forward through torch autograd, in the inputs' own dtypes."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *params)]
    out = REF[kind](*leaves, eps=EPS, branch_scale=bs)
    out.backward(dout)
    return [t.grad for t in leaves]


def _rows(kind, case):
    """Ours, the closed form and torch autograd per gradient: (got, [(name, ours, closed form, autograd)]), once ours
    is checked to have its input's dtype and shape."""
    got = ours(kind, *case)
    cf = closed_form(kind, *case)
    ag = torch_autograd(kind, *case)
    for name, g, inp in zip(NAMES, got, (case[1], *case[2])):
        assert g.dtype == inp.dtype and g.shape == inp.shape, name
    return got, list(zip(NAMES, got, cf, ag))


@pytest.mark.parametrize("scale", [False, True], ids=["no_scale", "branch_scale"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B1", "B3"])
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_fp32_matches_closed_form_and_autograd(kind, shape, scale):
    """fp32 (ieee dots): every gradient within 1e-5 * max|ref| of both oracles (measured worst ~4e-7 relative)."""
    case = make_case(kind, shape, scale=scale)
    got, rows = _rows(kind, case)
    for name, g, c, a in rows:
        scale_ = c.abs().max().item()
        assert scale_ > 1e-2, f"{name}: vacuous reference"
        assert max_err(g, c) <= 1e-5 * scale_, f"{name}: vs closed form {max_err(g, c):.3g} (scale {scale_:.3g})"
        assert max_err(g, a) <= 1e-5 * scale_, f"{name}: vs autograd {max_err(g, a):.3g} (scale {scale_:.3g})"
    if scale and shape[0] > 1:  # sample 1 has branch scale 0: its tokens get exactly the residual gradient
        assert torch.equal(got[0][1], case[0][1])


def _three_way(kind, case, low):
    # err(ours vs closed-form fp32) <= 2 * err(torch autograd in the same dtypes vs it) + THREE_WAY_ATOL["bwd_rel"]
    for name, g, c, a in _rows(kind, case)[1]:
        assert_three_way(g, c, a, "bwd_rel", low, what=name)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_fp16_three_way(kind):
    """fp16 x and weights: err(ours vs fp32 oracle) <= 2 * err(torch fp16 autograd vs fp32 oracle) + 1e-3 * max|ref|."""
    _three_way(kind, make_case(kind, SHAPES[1], torch.float16, scale=True), torch.float16)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_bf16_three_way(kind):
    """bf16 x and weights, three-way rule with atol 1e-2 * max|ref|.

    Under the interpreter bf16 tl.dot is broken (triton issue 11584), so the kernels' dot helper (_common.mma, under
    the interpreter only) upcasts the dot operands, already rounded to bf16 by the same loads/casts as on GPU, to fp32
    right before tl.dot. That is what the GPU's bf16 MMA computes (exact products, fp32 accumulation), so this covers
    every load, store, cast and rounding point of the bf16 path; only the MMA instruction itself is not exercised
    (on GPU mma is a plain tl.dot). The interpreter
    also rounds fp32 -> bf16 toward zero (the GPU rounds to nearest even; measured with triton 3.8), a bias that makes
    our error here up to ~2.5x torch's on the weight gradients: the atol absorbs it."""
    _three_way(kind, make_case(kind, SHAPES[1], torch.bfloat16, scale=True), torch.bfloat16)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_mixed_fp32_x_bf16_weights(kind):
    """autocast's contract: x/dout fp32, MLP weights bf16 (LN params fp32). dx comes back fp32, weight grads bf16;
    three-way rule against torch autograd of the same mixed-dtype reference forward."""
    case = make_case(kind, SHAPES[0], torch.float32, torch.bfloat16, scale=True)
    _three_way(kind, case, torch.bfloat16)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_deterministic(kind):
    """Two identical backward passes give bitwise-identical gradients (fp32 partials reduced in a fixed order by one
    kernel, no atomics)."""
    case = make_case(kind, SHAPES[1], scale=True)
    first, second = ours(kind, *case), ours(kind, *case)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_channel_even_k_path(dtype):
    """C a multiple of DUAL_K_MULTIPLE: the dual GEMM's K loop runs without a K mask (EVEN_K); the other tests' C = 40 /
    72 take the masked loop. fp32 against both oracles at 1e-5, bf16 by the three-way rule."""
    from fastmixer.kernels.channel_mix_bwd import DUAL_K_MULTIPLE

    shape = (2, 36, DUAL_K_MULTIPLE, 21, 75)
    case = make_case("channel", shape, dtype, scale=True)
    if dtype == torch.bfloat16:
        _three_way("channel", case, torch.bfloat16)
        return
    for name, g, c, a in _rows("channel", case)[1]:
        scale_ = c.abs().max().item()
        assert max_err(g, c) <= 1e-5 * scale_ and max_err(g, a) <= 1e-5 * scale_, name


@pytest.mark.parametrize("S", [576, 784], ids=["S576", "S784"])
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_large_token_counts_small_width(kind, S):
    """384 / 448 px token counts (S = 576, 784: many ragged K steps of the token GEMMs) at a small width, fp32, against
    the closed form (measured worst ~7e-7 relative)."""
    case = make_case(kind, (1, S, 24, 21, 40))
    for name, g, c in zip(NAMES, ours(kind, *case), closed_form(kind, *case)):
        assert max_err(g, c) <= 1e-5 * c.abs().max().item(), name


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype"),
    [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
    ids=["fp16", "bf16", "autocast"],
)
@pytest.mark.parametrize("S", [576, 784], ids=["S576", "S784"])
def test_token_large_token_counts_low_precision(S, x_dtype, w_dtype):
    """The token GEMMs at 384 / 448 px token counts in the 16-bit routes, with drop-path: K = S runs many BLOCK_K
    steps with a ragged last one, C = 136 and Dt = 75 take two tiles / K steps with ragged edges; three-way rule."""
    case = make_case("token", (1, S, 136, 75, 40), x_dtype, w_dtype, scale=True)
    _three_way("token", case, w_dtype)


# (B, S, C, Dt, Dc) of the token backward's route tests: S = 196 / 49 / 5 pad to 256 / 64 / 16 tokens
SHAPES_FUSED = [(2, 196, 72, 40, 9), (2, 49, 72, 25, 99), (2, 5, 70, 40, 9)]


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES_FUSED, ids=["S196", "S49", "S5"])
def test_token_fused_and_split_routes(shape, dtype, act):
    """The token GEMMs' two routes at the same 16-bit case, with drop-path: _token_dgrad_dy_kernel (split=False, the
    sm_90 route for large grids) and _token_dgrad_kernel + _token_dy_kernel (split=True). S = 196 pads the strips to
    256 tokens (60 masked), S = 49 to 64, S = 5 to 16; Dt = 40 / 25 and C = 72 / 70 leave ragged hidden chunks and
    channel tiles. Each route's gradients by the three-way rule against the fp32 closed form and torch autograd, and
    the launches each route makes."""
    from fastmixer.bench.launches import count_launches

    dout, x, params, bs = make_case("token", shape, dtype, scale=True)
    mix, kw = MixArgs(x, *params, bs), dict(eps=EPS, allow_tf32=False, act=act)
    fused, names = count_launches(token_mix_bwd, dout, mix, **kw, split=False)
    split, split_names = count_launches(token_mix_bwd, dout, mix, **kw, split=True)
    assert "_token_dgrad_dy_kernel" in names and "_token_dgrad_kernel" not in names
    assert {"_token_dgrad_kernel", "_token_dy_kernel"} <= set(split_names) and len(split_names) == len(names) + 1
    ref = reference.mix_backward_ref(
        "token", dout.float(), x.float(), *(p.float() for p in params), eps=EPS, branch_scale=bs, act=act
    )
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *params)]
    reference.token_mix_ref(*leaves, eps=EPS, branch_scale=bs, act=act).backward(dout)
    for name, f, s_, c, a in zip(NAMES, fused, split, ref, (t.grad for t in leaves)):
        assert_three_way(f, c.float(), a, "bwd_rel", dtype, what=f"fused {name}")
        assert_three_way(s_, c.float(), a, "bwd_rel", dtype, what=f"split {name}")
    assert torch.equal(fused[0][1], dout[1])  # sample 1 has branch scale 0: only the residual gradient


def test_token_route_choice():
    """_fuses: the fused dgrad + dy kernel for 16-bit weights at S <= 256 with >= 256 (image, 64-channel tile)
    programs, on CPU as on sm_90: B/16 (C = 768, 12 tiles per image) from batch 22, L/16 (16 tiles) from 16."""
    from fastmixer.kernels.token_mix_bwd import _fuses

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert _fuses(256, 196, 768, bf16, cpu) and _fuses(256, 256, 1280, torch.float16, cpu)
    assert _fuses(22, 196, 768, bf16, cpu) and not _fuses(21, 196, 768, bf16, cpu)
    assert _fuses(16, 196, 1024, bf16, cpu) and not _fuses(15, 196, 1024, bf16, cpu)
    assert not _fuses(256, 196, 768, torch.float32, cpu)  # tf32 / fp32: the split pair
    assert _fuses(256, 256, 768, bf16, cpu) and not _fuses(256, 257, 768, bf16, cpu)  # the dy^T strip caps S_PAD


def test_token_fused_route_refuses_what_it_cannot_run():
    dout, x, params, _ = make_case("token", SHAPES[0])  # fp32 weights
    with pytest.raises(ValueError, match="fused dgrad \\+ dy kernel takes fp16/bf16"):
        token_mix_bwd(dout, MixArgs(x, *params), eps=EPS, allow_tf32=False, split=False)
    dout, x, params, _ = make_case("token", (1, 300, 8, 5, 3), torch.bfloat16)
    with pytest.raises(ValueError, match="S = 300"):
        token_mix_bwd(dout, MixArgs(x, *params), eps=EPS, allow_tf32=False, split=False)


def test_reduce_partials_one_launch_fixed_order():
    """reduce_partials: several partial buffers of different shapes -> their column sums, each stored in its own
    dtype, in one launch; the same bits on every call; bad buffers refused."""
    from fastmixer.bench.launches import count_launches
    from fastmixer.kernels.channel_mix_bwd import REDUCE_SEGMENTS, reduce_partials

    g = torch.Generator().manual_seed(3)
    shapes = [(7, (40,)), (1, (21, 36)), (13, (99,)), (3, (5,)), (2, (36, 21)), (9, (1,))]  # (rows R, out shape)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16, torch.float32]
    parts = [torch.randn(r, *shape, generator=g).to(DEVICE) for r, shape in shapes]
    outs = [torch.empty(shape, device=DEVICE, dtype=dt) for (_, shape), dt in zip(shapes, dtypes)]
    _, names = count_launches(reduce_partials, list(zip(parts, outs)))
    assert names == ["_reduce_partials_kernel"]
    first = [o.clone() for o in outs]
    for p, o in zip(parts, outs):
        ref = p.double().sum(dim=0)
        assert o.dtype in dtypes and o.shape == ref.shape
        tol = 1e-5 if o.dtype == torch.float32 else 1e-2
        assert max_err(o, ref) <= tol * max(1.0, ref.abs().max().item())
    reduce_partials(list(zip(parts, outs)))
    assert all(torch.equal(a, b) for a, b in zip(first, outs))
    with pytest.raises(ValueError, match="dense fp32"):
        reduce_partials([(parts[0].half(), outs[0])])
    with pytest.raises(ValueError, match="pairs"):
        reduce_partials([(parts[0], outs[0])] * (REDUCE_SEGMENTS + 1))


@pytest.mark.slow
@pytest.mark.skipif(INTERPRET, reason="one B/16 block backward takes ~80-120 s under the Triton interpreter")
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_b16_block_shape(kind):
    """One real Mixer-B/16 block (S=196, C=768, Dt=384, Dc=3072) at batch 1, fp32, against the closed form."""
    case = make_case(kind, (1, 196, 768, 384, 3072))
    got = ours(kind, *case)
    for name, g, c in zip(NAMES, got, closed_form(kind, *case)):
        assert max_err(g, c) <= 1e-5 * c.abs().max().item(), name


def test_bad_arguments():
    dout, x, params, _ = make_case("channel", SHAPES[1])
    with pytest.raises(ValueError, match="dout must have x's shape"):
        channel_mix_bwd(dout[:, :-1], MixArgs(x, *params), eps=EPS, allow_tf32=False)
    with pytest.raises(ValueError, match="fc1_weight must have shape"):
        token_mix_bwd(dout, MixArgs(x, *params), eps=EPS, allow_tf32=False)  # channel-shaped weights for token mixing
    with pytest.raises(ValueError, match="branch_scale must have shape"):
        channel_mix_bwd(dout, MixArgs(x, *params, torch.ones(5, device=DEVICE)), eps=EPS, allow_tf32=False)
    with pytest.raises(TypeError, match="x must be floating point"):
        channel_mix_bwd(dout, MixArgs(x.to(torch.int32), *params), eps=EPS, allow_tf32=False)
    with pytest.raises(TypeError, match=r"x must be float32/float16/bfloat16 .*reference path"):
        token_mix_bwd(dout, MixArgs(x.double(), *make_case("token", SHAPES[1])[2]), eps=EPS, allow_tf32=False)
    with pytest.raises(TypeError, match="dout must be float32/float16/bfloat16"):
        channel_mix_bwd(dout.double(), MixArgs(x, *params), eps=EPS, allow_tf32=False)
    with pytest.raises(ValueError, match="act must be one of"):
        channel_mix_bwd(dout, MixArgs(x, *params), eps=EPS, allow_tf32=False, act="tanh")
    bad = list(params)
    bad[3] = bad[3].half()
    with pytest.raises(TypeError, match="fc1_bias must have fc1_weight's dtype"):
        channel_mix_bwd(dout, MixArgs(x, *bad), eps=EPS, allow_tf32=False)


def test_dgrad_prune_matches_the_specs():
    """The token dgrad autotuner's prune and the AOT specs agree: the tanh GELU drops the 4-warp 64x128 tiles (they
    spill on sm_90 with triton 3.6), exact GELU keeps every config, and the kernel report builds exactly those."""
    from fastmixer.kernels import token_mix_bwd as tmb

    y = torch.empty(1, 4, 4, dtype=torch.bfloat16)
    every = tmb._gemm_configs("dgrad", "16")
    exact = tmb._prune_dgrad(every, {"Y": y}, PRECISION="ieee", ACT="gelu")
    tanh = tmb._prune_dgrad(every, {"Y": y}, PRECISION="ieee", ACT="gelu_tanh")
    assert exact == every
    assert tanh and len(tanh) < len(every)
    assert all(not (c.num_warps == 4 and c.kwargs["BLOCK_C"] == 128) for c in tanh)
    assert tanh == [c for _, c in tmb._dgrad_gpu_configs("16", "gelu_tanh")]
