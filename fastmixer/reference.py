"""Pure-PyTorch reference of the two fused Mixer ops: the CPU path and the oracle for every kernel test.

The math is written exactly as timm's MixerBlock computes it (layer_norm -> transpose -> Linear -> GELU -> Linear ->
transpose -> residual add), so on the reference backend fastmixer and timm agree to the last bit in fp32, and behave
identically under autocast. (The `.to(fc1_weight.dtype)` casts are no-ops there; they matter only when the fused op is
handed autocast-cast weights with an fp32 residual stream.) It lives in fastmixer/ rather than beside each Triton
kernel so that the CPU path never imports triton (absent on macOS/Windows/aarch64 installs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastmixer.mix_args import MixArgs, approximate_of


def _branch_scale(branch: Tensor, branch_scale: Tensor | None) -> Tensor:
    # branch_scale: [B] per-sample stochastic-depth factor (0 or 1/keep_prob), broadcast over [B, S, C].
    if branch_scale is None:
        return branch
    return branch * branch_scale.view(-1, 1, 1).to(branch.dtype)


def mix_ref(kind: str, args: MixArgs, *, eps: float, act: str = "gelu") -> Tensor:
    """token_mix (kind="token") or channel_mix (kind="channel") in plain aten ops: x + fc2(GELU(fc1(LN(x)))), the MLP
    contracting over tokens (on LN(x)^T, transposed back) or over channels.

    args (fastmixer.mix_args.MixArgs): x [B, S, C]; ln_* [C]; fc1_weight [D, n]; fc1_bias [D]; fc2_weight [n, D];
    fc2_bias [n] (n = S or C); branch_scale [B] or None -> [B, S, C]. act: "gelu" (exact erf) or "gelu_tanh".
    """
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args
    y = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    if kind == "token":
        y = y.transpose(1, 2)  # [B, C, S]
    h = F.gelu(F.linear(y.to(fc1_weight.dtype), fc1_weight, fc1_bias), approximate=approximate_of(act))  # [.., D]
    o = F.linear(h, fc2_weight, fc2_bias)
    if kind == "token":
        o = o.transpose(1, 2)  # [B, S, C]
    return x + _branch_scale(o, branch_scale)


def token_mix_ref(*args: Tensor, eps: float, act: str = "gelu", **tensors: Tensor | None) -> Tensor:
    """u = x + fc2(GELU(fc1(LN(x)^T)))^T, contracting over tokens: fc1_weight [Dt, S], fc2_weight [S, Dt]. The tensors
    are MixArgs' fields (x, ln_weight, ..., fc2_bias, branch_scale=None), positional or by name (mix_ref)."""
    return mix_ref("token", MixArgs(*args, **tensors), eps=eps, act=act)


def channel_mix_ref(*args: Tensor, eps: float, act: str = "gelu", **tensors: Tensor | None) -> Tensor:
    """x + fc2(GELU(fc1(LN(x)))) over channels: fc1_weight [Dc, C], fc2_weight [C, Dc]. The tensors are MixArgs'
    fields, positional or by name (mix_ref)."""
    return mix_ref("channel", MixArgs(*args, **tensors), eps=eps, act=act)


def norm_pool_ref(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float) -> Tensor:
    """Final LayerNorm then mean over tokens: x [B, S, C] -> [B, C]."""
    return F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps).mean(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Closed-form backward of the two ops: the oracle the Triton backward kernels (kernels/*_bwd.py) are tested against.
# Everything is computed in fp32 and cast back to each input's dtype.
#   fwd:  y = LN(x) = xhat * g + beta,  xhat = (x - mu) * rstd
#         a = y W1^T + b1,  h = GELU(a),  o = h W2^T + b2,  out = x + s * o      (token mix: y, o transposed [B, C, S])
#   bwd:  do = s * dout;  dW2 = do^T h;  db2 = sum do;  da = (do W2) * GELU'(a);  dW1 = da^T y;  db1 = sum da
#         dy = da W1;  dg = sum dy * xhat;  dbeta = sum dy
#         dx = dout + rstd * (dy*g - mean_C(dy*g) - xhat * mean_C(dy*g * xhat))
# ---------------------------------------------------------------------------------------------------------------------
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_OVER_PI = 0.7978845608028654
_TANH_CUBIC = 0.044715


def gelu_grad(a: Tensor, act: str = "gelu") -> Tensor:
    """d/da of GELU. act="gelu" (exact erf): Phi(a) + a * phi(a). act="gelu_tanh": with u = k (a + c a^3),
    k = sqrt(2 / pi), c = 0.044715, t = tanh(u): 0.5 (1 + t) + 0.5 a (1 - t^2) k (1 + 3 c a^2)."""
    if act == "gelu_tanh":
        t = torch.tanh(_SQRT_2_OVER_PI * (a + _TANH_CUBIC * a * a * a))
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * a * a)
    return 0.5 * (1.0 + torch.erf(a * _INV_SQRT2)) + a * torch.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _ln_stats(x32: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    mu = x32.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt((x32 - mu).pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x32 - mu) * rstd, rstd  # xhat [.., C], rstd [.., 1]


def _ln_backward(dy: Tensor, xhat: Tensor, rstd: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dyg = dy * g
    dx = rstd * (dyg - dyg.mean(dim=-1, keepdim=True) - xhat * (dyg * xhat).mean(dim=-1, keepdim=True))
    red = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(dim=red), dy.sum(dim=red)


def _scaled(dout32: Tensor, branch_scale: Tensor | None) -> Tensor:
    return dout32 if branch_scale is None else dout32 * branch_scale.view(-1, 1, 1).float()


def mix_backward_ref(
    kind: str, dout: Tensor, *args: Tensor, eps: float, act: str = "gelu", **tensors: Tensor | None
) -> tuple[Tensor, ...]:
    """Gradients (dx, d ln_weight, d ln_bias, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias) of token_mix
    (kind="token") or channel_mix (kind="channel") with activation `act`, in the dtypes of the corresponding inputs.
    dout [B, S, C]; the tensors are MixArgs' fields (x, ln_weight, ..., fc2_bias, branch_scale=None), positional or
    by name, as mix_ref takes them."""
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = MixArgs(*args, **tensors)
    x32, g = x.float(), ln_weight.float()
    w1, w2 = fc1_weight.float(), fc2_weight.float()
    xhat, rstd = _ln_stats(x32, eps)
    y = xhat * g + ln_bias.float()  # [B, S, C]
    do = _scaled(dout.float(), branch_scale)  # [B, S, C]
    if kind == "token":
        y, do = y.transpose(1, 2), do.transpose(1, 2)  # [B, C, S]
    a = y @ w1.t() + fc1_bias.float()  # [B, *, D]
    h = F.gelu(a, approximate=approximate_of(act))
    red = (0, 1)
    dw2 = torch.einsum("bno,bnd->od", do, h)
    db2 = do.sum(dim=red)
    da = (do @ w2) * gelu_grad(a, act)
    dw1 = torch.einsum("bnd,bni->di", da, y)
    db1 = da.sum(dim=red)
    dy = da @ w1
    if kind == "token":
        dy = dy.transpose(1, 2)  # [B, S, C]
    dx_ln, dg, dbeta = _ln_backward(dy, xhat, rstd, g)
    grads = (dout.float() + dx_ln, dg, dbeta, dw1, db1, dw2, db2)
    inputs = (x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return tuple(gr.to(t.dtype) for gr, t in zip(grads, inputs))
