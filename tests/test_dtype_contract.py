"""One argument contract for every path (fastmixer/mix_args.py): the public ops accept and refuse exactly the same
calls on the reference and the Triton backend, every refusal a ValueError/TypeError naming the argument and what was
expected; float64 models and inputs run the reference path on any backend (no launch), never failing in a launcher.

The Triton backend runs the interpreter on CPU (tests/conftest.py), the compiled kernels on a GPU. Shapes are tiny.
"""

import pytest
import torch
from conftest import DEVICE
from helpers import assert_three_way, randomize_
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

import fastmixer
from fastmixer import MlpMixer, ops, reference
from fastmixer.bench.launches import count_launches, record_launches
from fastmixer.mix_args import MixArgs

BACKENDS = ["reference", "triton"]
B, S, C, D = 3, 6, 8, 5


def _args(kind: str, dtype=torch.float32, device=DEVICE) -> dict:
    g = torch.Generator().manual_seed(0)
    n = S if kind == "token" else C
    shapes = dict(x=(B, S, C), ln_weight=(C,), ln_bias=(C,), fc1_weight=(D, n), fc1_bias=(D,), fc2_weight=(n, D),
                  fc2_bias=(n,))  # fmt: skip
    out = {k: (0.5 * torch.randn(sh, generator=g)).to(device, dtype) for k, sh in shapes.items()}
    out["ln_weight"] += 1
    return out


def _call(kind: str, backend: str, args: dict, **kw) -> torch.Tensor:
    op = fastmixer.token_mix if kind == "token" else fastmixer.channel_mix
    with fastmixer.use_backend(backend):
        return op(**args, **kw)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view (every other element of a doubled buffer)."""
    v = torch.stack([t, t], dim=-1)[..., 0]
    assert not v.is_contiguous() or t.numel() <= 1
    return v


# (id, change to the good arguments, extra keyword arguments, exception, message regex); {n} = the op's name
REFUSALS = [
    ("x-not-tensor", lambda a: a.update(x=a["x"].tolist()), {}, TypeError, r"{n}: x must be a torch.Tensor"),
    ("x-rank", lambda a: a.update(x=a["x"][0]), {}, ValueError, r"{n}: x must be \[B, S, C\] \(rank 3\)"),
    ("x-int", lambda a: a.update(x=a["x"].to(torch.int64)), {}, TypeError, r"{n}: x must be floating point"),
    ("ln-shape", lambda a: a.update(ln_weight=a["ln_weight"][:-1]), {}, ValueError,
     r"{n}: ln_weight must have shape \(8,\)"),
    ("ln-int", lambda a: a.update(ln_bias=a["ln_bias"].int()), {}, TypeError, r"{n}: ln_bias must be floating point"),
    ("ln-fp64", lambda a: a.update(ln_weight=a["ln_weight"].double(), ln_bias=a["ln_bias"].double()), {}, TypeError,
     r"{n}: float64 runs on the reference path and needs x and every LayerNorm/MLP parameter in float64"),
    ("ln-bf16-fp32-x", lambda a: a.update(ln_weight=a["ln_weight"].bfloat16(), ln_bias=a["ln_bias"].bfloat16()), {},
     TypeError, r"{n}: ln_weight must be x's dtype torch.float32, got torch.bfloat16"),
    ("ln-bias-dtype", lambda a: a.update(ln_bias=a["ln_bias"].half()), {}, TypeError,
     r"{n}: ln_bias must have ln_weight's dtype torch.float32"),
    ("fc1b-missing", lambda a: a.update(fc1_bias=None), {}, ValueError, r"{n}: fc1_bias is required"),
    ("fc2w-shape", lambda a: a.update(fc2_weight=a["fc2_weight"].t()), {}, ValueError,
     r"{n}: fc2_weight must have shape"),
    ("fc1w-rank", lambda a: a.update(fc1_weight=a["fc1_weight"][0]), {}, ValueError,
     r"{n}: fc1_weight must have shape \(D, \d+\) with D >= 1"),
    ("fc1b-dtype", lambda a: a.update(fc1_bias=a["fc1_bias"].half()), {}, TypeError,
     r"{n}: fc1_bias must have fc1_weight's dtype torch.float32, got torch.float16"),
    ("w-vs-x", lambda a: a.update(**{k: a[k].half() for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")}),
     {}, TypeError, r"{n}: x is torch.float32 but the weights are torch.float16; .*torch.autocast"),
    ("w-fp64", lambda a: a.update(**{k: a[k].double() for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")}),
     {}, TypeError, r"{n}: float64 runs on the reference path .*got x float32, ln_weight float32"),
    ("x-fp64", lambda a: a.update(x=a["x"].double()), {}, TypeError, r"{n}: float64 runs on the reference path"),
    ("device", lambda a: a.update(fc2_bias=a["fc2_bias"].to("meta")), {}, ValueError,
     r"{n}: fc2_bias is on meta but x is on"),
    ("scale-shape", lambda a: None, {"branch_scale": torch.ones(2)}, ValueError,
     r"{n}: branch_scale must have shape \(3,\)"),
    ("scale-int", lambda a: None, {"branch_scale": torch.ones(3, dtype=torch.int32)}, TypeError,
     r"{n}: branch_scale must be floating point"),
    ("eps-negative", lambda a: None, {"eps": -1e-6}, ValueError, r"{n}: eps must be a finite number >= 0"),
    ("eps-nan", lambda a: None, {"eps": float("nan")}, ValueError, r"{n}: eps must be a finite number >= 0"),
    ("eps-str", lambda a: None, {"eps": "1e-6"}, TypeError, r"{n}: eps must be a real number, got str"),
    ("act", lambda a: None, {"act": "relu"}, ValueError, r"{n}: act must be one of \('gelu', 'gelu_tanh'\)"),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["token", "channel"])
@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_ops_refuse_the_same_on_both_backends(case, kind, backend):
    _, change, extra, exc, match = case
    args = _args(kind)
    change(args)
    extra = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    with record_launches() as launches, pytest.raises(exc, match=match.format(n=f"{kind}_mix")):
        _call(kind, backend, args, **extra)
    assert launches == []  # refused before any kernel


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_ops_accept_the_same_on_both_backends(kind):
    """What either backend accepts, both accept, with the same result (fp32 within 1e-5): non-contiguous LayerNorm and
    MLP parameters, fp32 LayerNorm parameters with a bf16 model (torch's layer_norm takes them), a float branch scale
    in another dtype."""
    base = _args(kind)
    cases = {
        "strided-ln": dict(base, ln_weight=_strided(base["ln_weight"]), ln_bias=_strided(base["ln_bias"])),
        "strided-fc": dict(
            base, fc1_weight=base["fc1_weight"].t().contiguous().t(), fc2_bias=_strided(base["fc2_bias"])
        ),
    }
    for name, args in cases.items():
        ref, tri = _call(kind, "reference", args), _call(kind, "triton", args)
        assert (tri - ref).abs().max().item() <= 1e-5, name
    scale = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64, device=DEVICE)
    ref, tri = (_call(kind, b, base, branch_scale=scale) for b in BACKENDS)
    assert (tri - ref).abs().max().item() <= 1e-5
    # bf16 model with fp32 LayerNorm parameters: three-way against fp32 math on the same values
    low = {k: (v if k.startswith("ln") else v.bfloat16()) for k, v in base.items()}
    gold = _call(kind, "reference", {k: v.float() for k, v in low.items()})
    ref, tri = _call(kind, "reference", low), _call(kind, "triton", low)
    assert ref.dtype == tri.dtype == torch.bfloat16
    assert_three_way(tri, gold, ref, "op_abs_1e-2", what="bf16 weights, fp32 LayerNorm")


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_autocast_any_input_dtype_on_both_backends(kind):
    """Under autocast (bf16 on the device) an fp16 x with fp32 weights runs on both backends (the kernels take any mix
    of x and matmul dtypes): output fp32 = promote(fp16, bf16), as torch's, and the three-way rule against fp32 math
    on the same fp16 x: err(triton) <= 2 * err(reference under autocast) + bf16 eps."""
    args = dict(_args(kind), x=_args(kind)["x"].half())
    gold = _call(kind, "reference", dict(args, x=args["x"].float()))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        ref, tri = _call(kind, "reference", args), _call(kind, "triton", args)
    assert ref.dtype == tri.dtype == torch.float32
    err_tri, _ = assert_three_way(tri, gold, ref, "op_eps", torch.bfloat16, what="autocast bf16, fp16 x")
    assert err_tri > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_float64_runs_the_reference_path(kind, backend):
    """A float64 call is routed to the reference math on any backend: bit-identical to it, no Triton launch, with
    gradients."""
    args = {k: v.requires_grad_(True) for k, v in _args(kind, torch.float64).items()}
    out, launches = count_launches(_call, kind, backend, args)
    assert launches == [] and out.dtype == torch.float64
    ref = (reference.token_mix_ref if kind == "token" else reference.channel_mix_ref)(*args.values(), eps=1e-6)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert all(v.grad is not None and v.grad.dtype == torch.float64 for v in args.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_pool_contract(backend):
    x, w, b = _args("channel")["x"], _args("channel")["ln_weight"], _args("channel")["ln_bias"]
    with fastmixer.use_backend(backend):
        torch.testing.assert_close(ops.norm_pool(x, _strided(w), b), reference.norm_pool_ref(x, w, b, eps=1e-6))
        out, launches = count_launches(ops.norm_pool, x.double(), w.double(), b.double())
        assert launches == [] and out.dtype == torch.float64
        for bad, exc, match in [
            (dict(x=x[0]), ValueError, r"norm_pool: x must be \[B, S, C\] \(rank 3\)"),
            (dict(x=x[:, :0]), ValueError, r"norm_pool: x has no tokens \(S = 0\)"),
            (dict(ln_weight=w[:-1]), ValueError, r"norm_pool: ln_weight must have shape \(8,\)"),
            (dict(ln_bias=b.double()), TypeError, r"norm_pool: float64 runs on the reference path"),
            (
                dict(ln_weight=w.half(), ln_bias=b.half()),
                TypeError,
                r"norm_pool: ln_weight must be x's dtype torch.float32, got torch.float16",
            ),
            (dict(eps=-1.0), ValueError, r"norm_pool: eps must be a finite number >= 0"),
        ]:
            call = {**dict(x=x, ln_weight=w, ln_bias=b, eps=1e-6), **bad}
            with pytest.raises(exc, match=match):
                ops.norm_pool(call.pop("x"), call.pop("ln_weight"), call.pop("ln_bias"), **call)


# ------------------------------------------------------------------------------------------------ the model
TINY = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)  # S = 36, C = 40


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_float64_model_runs_on_any_backend(backend):
    """model.double() with a float64 input: accepted by the input check and run on the reference path (no launch),
    equal to timm's float64 model, forward and backward."""
    ours = randomize_(MlpMixer(**TINY)).double().to(DEVICE)
    theirs = TimmMlpMixer(**TINY).double().to(DEVICE)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 42, 42, dtype=torch.float64, device=DEVICE)
    with fastmixer.use_backend(backend):
        out, launches = count_launches(ours, x)
    assert launches == [] and out.dtype == torch.float64
    want = theirs(x)
    assert (out - want).abs().max().item() <= 1e-12
    out.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-12, name


def test_mixed_float64_model_refused_by_the_input_check():
    model = MlpMixer(**TINY).double()
    with pytest.raises(TypeError, match=r"input is torch.float32 but the model is torch.float64"):
        model(torch.randn(1, 3, 42, 42))


@pytest.mark.parametrize("launcher", ["token_mix_fwd", "channel_mix_fwd", "token_mix_bwd", "channel_mix_bwd"])
def test_launchers_refuse_float64_naming_the_route(launcher):
    """The launchers run the same contract with the kernels' dtypes: float64 is refused with a TypeError that says
    where it runs instead (the public ops route it there before any launcher)."""
    from fastmixer.kernels import channel_mix, channel_mix_bwd, token_mix, token_mix_bwd

    fns = {
        "token_mix_fwd": token_mix.token_mix_fwd,
        "channel_mix_fwd": channel_mix.channel_mix_fwd,
        "token_mix_bwd": token_mix_bwd.token_mix_bwd,
        "channel_mix_bwd": channel_mix_bwd.channel_mix_bwd,
    }
    fn = fns[launcher]
    kind = launcher.split("_")[0]
    args = MixArgs(**_args(kind, torch.float64))
    dout = [torch.ones_like(args.x, dtype=torch.float32)] if launcher.endswith("bwd") else []
    with pytest.raises(TypeError, match=r"x must be float32/float16/bfloat16 \(float64 runs on the reference path"):
        fn(*dout, args, eps=1e-6, allow_tf32=False)
