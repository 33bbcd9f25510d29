"""The seam between the model and the kernels: `token_mix`, `channel_mix` and `norm_pool`.

The model calls only the public functions here. Each one validates its arguments (clear ValueError/TypeError before any
kernel runs), resolves autocast, then dispatches on the backend:

  * "reference": the pure-PyTorch math of fastmixer.reference (plain aten ops: autograd, autocast and inductor see
    through it, and it is bit-identical to timm);
  * "triton": the fused kernels, reached through the `fastmixer::` custom ops so torch.compile(fullgraph=True) keeps one
    opaque node per op (fake impls give it shapes; register_autograd gives it a backward);
  * "auto" (default): triton for CUDA tensors, reference otherwise.

Choose with FASTMIXER_BACKEND=triton|reference|auto or `fastmixer.set_backend(...)`; `use_backend(...)` is the
scoped form. Forcing "triton" on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported (as the tests do).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from fastmixer import reference

BACKENDS = ("auto", "triton", "reference")
_backend = os.environ.get("FASTMIXER_BACKEND", "auto").strip().lower() or "auto"
if _backend not in BACKENDS:
    raise ValueError(f"FASTMIXER_BACKEND must be one of {BACKENDS}, got {_backend!r}")


def set_backend(name: str) -> None:
    """Select the kernel backend for every fastmixer op: "auto", "triton" or "reference"."""
    global _backend
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Scoped `set_backend`: restores the previous backend on exit."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(x: Tensor) -> str:
    """The backend that will run for input `x` ("triton" or "reference")."""
    if _backend == "reference" or x.is_meta:  # meta: shapes only, which the reference gives
        return "reference"
    if _backend == "triton":
        if not (x.is_cuda or _interpreting()):
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors (got device {x.device}) or TRITON_INTERPRET=1 set before "
                "triton is imported; use set_backend('auto') to run CPU tensors on the reference path"
            )
        return "triton"
    return "triton" if x.is_cuda else "reference"


# ------------------------------------------------------------------------------------------------ argument checking
def _check_mix_args(
    name: str,
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor | None,
    fc2_weight: Tensor,
    fc2_bias: Tensor | None,
    branch_scale: Tensor | None,
    mix_dim: int,
) -> None:
    # mix_dim: 1 for token mixing (fc1 contracts S), 2 for channel mixing (fc1 contracts C).
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: x must be [B, S, C] (rank 3), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be floating point (float32/float16/bfloat16), got {x.dtype}")
    B, _, C = x.shape
    n = x.shape[mix_dim]
    hidden = fc1_weight.shape[0] if fc1_weight.dim() == 2 else -1
    expected = {
        "ln_weight": (ln_weight, (C,)),
        "ln_bias": (ln_bias, (C,)),
        "fc1_weight": (fc1_weight, (hidden, n)),
        "fc1_bias": (fc1_bias, (hidden,)),
        "fc2_weight": (fc2_weight, (n, hidden)),
        "fc2_bias": (fc2_bias, (n,)),
        "branch_scale": (branch_scale, (B,)),
    }
    for arg, (t, shape) in expected.items():
        if t is None:
            if arg.endswith("bias") and arg != "ln_bias":
                raise ValueError(f"{name}: {arg} is required (the fused Mixer MLP has biases)")
            continue
        if hidden < 1 or tuple(t.shape) != shape:
            raise ValueError(
                f"{name}: {arg} must have shape {shape} for x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
        if t.device != x.device:
            raise ValueError(f"{name}: {arg} is on {t.device} but x is on {x.device}; move both to one device")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {arg} must be floating point, got {t.dtype}")


def _matmul_dtype(x: Tensor, fc1_weight: Tensor, name: str) -> torch.dtype | None:
    """The dtype the GEMMs run in: the autocast dtype when autocast is on for x's device, else the weights' dtype."""
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast there
        autocast = False
    if autocast:
        return torch.get_autocast_dtype(x.device.type)
    if fc1_weight.dtype != x.dtype:
        raise TypeError(
            f"{name}: x is {x.dtype} but the weights are {fc1_weight.dtype}; cast the model (model.to(dtype)) or run "
            "under torch.autocast"
        )
    return None


@torch.compiler.assume_constant_result  # a str-returning torch.* call breaks fullgraph capture otherwise
def _allow_tf32() -> bool:
    # Read once per compiled graph: changing the precision after compiling needs torch._dynamo.reset().
    return torch.get_float32_matmul_precision() != "highest"


# ------------------------------------------------------------------------------------------------ custom ops (triton)
def _launch(kind: str, *args, **kwargs) -> Tensor:
    if kind == "token":
        from fastmixer.kernels.token_mix import token_mix_fwd as fwd
    elif kind == "channel":
        from fastmixer.kernels.channel_mix import channel_mix_fwd as fwd
    else:
        from fastmixer.kernels.norm_pool import norm_pool_fwd as fwd
    return fwd(*args, **kwargs)


def _out_dtype(x: Tensor, w: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, w.dtype)


# Python implementation of each fastmixer:: op by name (fastmixer.counting runs them under its dispatch mode).
IMPLS: dict[str, object] = {}


def _fwd_op(kind: str):
    def impl(
        x: Tensor,
        ln_weight: Tensor,
        ln_bias: Tensor,
        fc1_weight: Tensor,
        fc1_bias: Tensor,
        fc2_weight: Tensor,
        fc2_bias: Tensor,
        branch_scale: Tensor | None,
        eps: float,
        allow_tf32: bool,
    ) -> Tensor:
        w1, w2 = fc1_weight.contiguous(), fc2_weight.contiguous()
        args = (x.contiguous(), ln_weight, ln_bias, w1, fc1_bias, w2, fc2_bias, branch_scale)
        return _launch(kind, *args, eps=eps, allow_tf32=allow_tf32)

    IMPLS[f"{kind}_mix"] = impl
    op = torch.library.custom_op(f"fastmixer::{kind}_mix", impl, mutates_args=())

    @op.register_fake
    def _(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale, eps, allow_tf32):
        # [B, S, C], contiguous, in promote(x, weights) dtype: what the launchers return.
        return x.new_empty(x.shape, dtype=_out_dtype(x, fc1_weight))

    return op


_token_mix_op = _fwd_op("token")
_channel_mix_op = _fwd_op("channel")


def _launch_bwd(kind: str, *args, **kwargs) -> tuple[Tensor, ...]:
    if kind == "token":
        from fastmixer.kernels.token_mix_bwd import token_mix_bwd as bwd
    else:
        from fastmixer.kernels.channel_mix_bwd import channel_mix_bwd as bwd
    return bwd(*args, **kwargs)


def _bwd_op(kind: str):
    def impl(
        dout: Tensor,
        x: Tensor,
        ln_weight: Tensor,
        ln_bias: Tensor,
        fc1_weight: Tensor,
        fc1_bias: Tensor,
        fc2_weight: Tensor,
        fc2_bias: Tensor,
        branch_scale: Tensor | None,
        eps: float,
        allow_tf32: bool,
    ) -> list[Tensor]:
        # -> [dx, d ln_weight, d ln_bias, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias], each in its input's dtype
        w1, w2 = fc1_weight.contiguous(), fc2_weight.contiguous()  # as the forward op; no-ops for nn.Linear weights
        args = (dout.contiguous(), x.contiguous(), ln_weight, ln_bias, w1, fc1_bias, w2, fc2_bias, branch_scale)
        return list(_launch_bwd(kind, *args, eps=eps, allow_tf32=allow_tf32))

    IMPLS[f"{kind}_mix_bwd"] = impl
    op = torch.library.custom_op(f"fastmixer::{kind}_mix_bwd", impl, mutates_args=())

    @op.register_fake
    def _(dout, x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale, eps, allow_tf32):
        return [torch.empty_like(t) for t in (x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)]

    return op


# Backward ops: Triton (see kernels/*_bwd.py). They recompute LN(x), fc1 and GELU from x, so the forward saves only
# its inputs (x and the parameters): no normalised or hidden activations are kept for backward.
_token_mix_bwd_op = _bwd_op("token")
_channel_mix_bwd_op = _bwd_op("channel")


def _setup_mix_context(ctx, inputs, output) -> None:
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale, eps, allow_tf32 = inputs
    ctx.save_for_backward(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
    ctx.eps = eps
    ctx.allow_tf32 = allow_tf32


def _mix_backward(bwd_op):
    def backward(ctx, dout: Tensor):
        saved = ctx.saved_tensors
        grads = bwd_op(dout, *saved, ctx.eps, ctx.allow_tf32)
        return (*grads, None, None, None)

    return backward


torch.library.register_autograd(
    "fastmixer::token_mix", _mix_backward(_token_mix_bwd_op), setup_context=_setup_mix_context
)
torch.library.register_autograd(
    "fastmixer::channel_mix", _mix_backward(_channel_mix_bwd_op), setup_context=_setup_mix_context
)


@torch.library.custom_op("fastmixer::norm_pool", mutates_args=())
def _norm_pool_op(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float) -> Tensor:
    return _launch("pool", x.contiguous(), ln_weight, ln_bias, eps=eps)


@_norm_pool_op.register_fake
def _norm_pool_fake(x, ln_weight, ln_bias, eps):
    return x.new_empty((x.shape[0], x.shape[2]))


def _norm_pool_setup(ctx, inputs, output) -> None:
    x, ln_weight, ln_bias, eps = inputs
    ctx.save_for_backward(x, ln_weight, ln_bias)
    ctx.eps = eps


def _norm_pool_backward(ctx, dout: Tensor):
    # y = mean_S(xhat * g + beta): dy[b, s, :] = dout[b, :] / S for every token. Plain PyTorch: one LN backward per
    # forward pass (not per block), so a kernel would buy little.
    x, ln_weight, ln_bias = ctx.saved_tensors
    xhat, rstd = reference._ln_stats(x.float(), ctx.eps)
    dy = (dout.float() / x.shape[1]).unsqueeze(1).expand(x.shape)
    dx, dg, dbeta = reference._ln_backward(dy, xhat, rstd, ln_weight.float())
    return dx.to(x.dtype), dg.to(ln_weight.dtype), dbeta.to(ln_bias.dtype), None


torch.library.register_autograd("fastmixer::norm_pool", _norm_pool_backward, setup_context=_norm_pool_setup)


# ------------------------------------------------------------------------------------------------ public functions
def _mix(
    kind: str,
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    eps: float,
    branch_scale: Tensor | None,
) -> Tensor:
    name = f"{kind}_mix"
    _check_mix_args(
        name,
        x,
        ln_weight,
        ln_bias,
        fc1_weight,
        fc1_bias,
        fc2_weight,
        fc2_bias,
        branch_scale,
        1 if kind == "token" else 2,
    )
    mm_dtype = _matmul_dtype(x, fc1_weight, name)
    if resolve_backend(x) == "reference":
        ref = reference.token_mix_ref if kind == "token" else reference.channel_mix_ref
        return ref(
            x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps=eps, branch_scale=branch_scale
        )
    if mm_dtype is not None:  # autocast: the GEMMs run in the autocast dtype; the residual stream keeps x's dtype
        fc1_weight, fc1_bias, fc2_weight, fc2_bias = (
            t.to(mm_dtype) for t in (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        )
    op = torch.ops.fastmixer.token_mix if kind == "token" else torch.ops.fastmixer.channel_mix
    x = x.contiguous()  # the stem's output is a transposed view; the kernels (and the saved input) need [B, S, C] dense
    with torch.autocast(x.device.type, enabled=False):
        return op(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale, eps, _allow_tf32())


def token_mix(
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    *,
    eps: float = 1e-6,
    branch_scale: Tensor | None = None,
) -> Tensor:
    """Fused token-mixing sub-block: x + s * fc2(GELU(fc1(LN(x)^T)))^T.

    x [B, S, C]; ln_* [C]; fc1_weight [Dt, S]; fc1_bias [Dt]; fc2_weight [S, Dt]; fc2_bias [S];
    branch_scale [B] (per-sample stochastic-depth factor, optional) -> [B, S, C] in x's dtype (autocast: promoted).
    One kernel on the triton backend: LN stats, LN, both GEMMs, GELU, biases and the residual are fused, and no
    transposed copy of x is made.
    """
    return _mix("token", x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps, branch_scale)


def channel_mix(
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    *,
    eps: float = 1e-6,
    branch_scale: Tensor | None = None,
) -> Tensor:
    """Fused channel-mixing sub-block: x + s * fc2(GELU(fc1(LN(x)))).

    x [B, S, C]; ln_* [C]; fc1_weight [Dc, C]; fc1_bias [Dc]; fc2_weight [C, Dc]; fc2_bias [C];
    branch_scale [B] (optional) -> [B, S, C]. On the triton backend: GEMM1 with LayerNorm in its prologue and
    bias + GELU in its epilogue, GEMM2 with bias + residual (+ branch scale) in its epilogue.
    """
    return _mix("channel", x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps, branch_scale)


def norm_pool(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Final LayerNorm + mean over tokens: x [B, S, C] -> [B, C] (one kernel on the triton backend)."""
    if x.dim() != 3:
        raise ValueError(f"norm_pool: x must be [B, S, C] (rank 3), got shape {tuple(x.shape)}")
    if resolve_backend(x) == "reference" or torch.is_autocast_enabled(x.device.type):
        return reference.norm_pool_ref(x, ln_weight, ln_bias, eps=eps)
    return torch.ops.fastmixer.norm_pool(x, ln_weight, ln_bias, eps)
