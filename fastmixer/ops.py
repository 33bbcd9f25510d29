"""The seam between the model and the kernels: `token_mix`, `channel_mix` and `norm_pool`.

The model calls only the public functions here. Each one validates its arguments (clear ValueError/TypeError before any
kernel runs), resolves autocast, then dispatches on the backend:

  * "reference": the pure-PyTorch math of fastmixer.reference (plain aten ops: autograd, autocast and inductor see
    through it, and it is bit-identical to timm);
  * "triton": the fused kernels, reached through the `fastmixer::` custom ops so torch.compile(fullgraph=True) keeps one
    opaque node per op (fake impls give it shapes; register_autograd gives it a backward);
  * "auto" (default): triton for CUDA tensors, reference otherwise; on CUDA the runtime selection
    (fastmixer/select.py, FASTMIXER_SELECT) may keep the reference path for a shape where it timed faster.

Choose with FASTMIXER_BACKEND=triton|reference|auto or `fastmixer.set_backend(...)` (the process-wide default, seen by
every thread), or `with fastmixer.use_backend(...)` (scoped to the current thread or asyncio task: a contextvars
override that never changes the process default). Forcing "triton" on CPU tensors needs TRITON_INTERPRET=1 set before
triton is imported (as the tests do). float64 always runs the reference path (the kernels take fp32/fp16/bf16).

Every argument is checked by fastmixer.mix_args before the backend is chosen, so both backends accept and refuse the
same calls (a ValueError/TypeError naming the argument and what was expected).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fastmixer import reference
from fastmixer import select as selection
from fastmixer.mix_args import MixArgs, check_mix_args, check_norm_args

BACKENDS = ("auto", "triton", "reference")


def _parse_backend(name: object, what: str) -> str:
    value = str(name).strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {value!r}")
    return value


_default_backend = _parse_backend(os.environ.get("FASTMIXER_BACKEND", "auto") or "auto", "FASTMIXER_BACKEND")
# use_backend's override for the current thread / asyncio task (None: the process default applies). A new thread
# starts with an empty context, so it sees the process default, never another thread's override.
_scoped_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastmixer_backend", default=None)


def set_backend(name: str) -> None:
    """Set the process-wide default backend ("auto", "triton" or "reference") for every thread. Process-global, like
    FASTMIXER_BACKEND (which sets it at import); a `use_backend` block in effect in the current context still wins
    there. For a per-thread or per-task choice use `use_backend`."""
    global _default_backend
    _default_backend = _parse_backend(name, "backend")


def get_backend() -> str:
    """The backend in effect here: the innermost `use_backend` of this thread/task, else the process default."""
    scoped = _scoped_backend.get()
    return _default_backend if scoped is None else scoped


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the block with backend `name` in this thread / asyncio task only (a contextvars override: other threads
    and the process default set by `set_backend` are untouched; nests, restores on exit)."""
    token = _scoped_backend.set(_parse_backend(name, "backend"))
    try:
        yield
    finally:
        _scoped_backend.reset(token)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# host_launches' override: the triton backend takes CPU tensors in this thread / asyncio task.
_host_launches: contextvars.ContextVar[bool] = contextvars.ContextVar("fastmixer_host_launches", default=False)


@contextlib.contextmanager
def host_launches() -> Iterator[None]:
    """Let the triton backend take CPU tensors in this block (this thread / asyncio task), for launches that a
    recorder logs without running them (fastmixer.bench.counting's dry counts) or that run under the interpreter."""
    token = _host_launches.set(True)
    try:
        yield
    finally:
        _host_launches.reset(token)


def resolve_backend(x: Tensor) -> str:
    """The backend that will run for input `x` ("triton" or "reference"). float64 always runs the reference path."""
    backend = get_backend()
    if backend == "reference" or x.dtype == torch.float64 or x.is_meta:  # meta: shapes only, which the reference gives
        return "reference"
    if backend == "triton":
        if not (x.is_cuda or _interpreting() or _host_launches.get()):
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors (got device {x.device}) or TRITON_INTERPRET=1 set before "
                "triton is imported; use set_backend('auto') to run CPU tensors on the reference path"
            )
        return "triton"
    return "triton" if x.is_cuda else "reference"


# ------------------------------------------------------------------------------------------------ autocast
def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype when autocast is on for x's device type, else None (also for device types autocast does
    not know, such as meta)."""
    try:
        enabled = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # "unknown device type for autocast"
        return None
    return torch.get_autocast_dtype(x.device.type) if enabled else None


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


_IMPLS: dict[str, Callable[..., object]] = {}  # fastmixer:: op name -> its Python implementation (fused_impl)


def fused_impl(name: str) -> Callable[..., object] | None:
    """The Python implementation behind `torch.ops.fastmixer.<name>` ("token_mix", "channel_mix_bwd", ...): the
    launcher call, for a TorchDispatchMode that must see the aten work inside the op (fastmixer.bench.counting).
    None for an op that does no aten work around its launch (norm_pool)."""
    return _IMPLS.get(name)


# The fused ops' flat schema: MixArgs' tensors (branch_scale optional), then eps, allow_tf32 and act; the backward ops
# take the upstream gradient dout first. The Python side packs the tensors back into one MixArgs (_split).
_MIX_SCHEMA = ", ".join(f"Tensor{'?' if f == 'branch_scale' else ''} {f}" for f in MixArgs._fields)
_MIX_SCHEMA += ", float eps, bool allow_tf32, str act='gelu'"


def _split(flat: tuple) -> tuple[MixArgs, dict[str, object]]:
    """A fused op's flat arguments (the dispatcher may leave out a trailing default act) -> (MixArgs, the launcher's
    keywords eps, allow_tf32, act)."""
    n = len(MixArgs._fields)
    eps, allow_tf32, *act = flat[n:]
    return MixArgs(*flat[:n]), dict(eps=eps, allow_tf32=allow_tf32, act=act[0] if act else "gelu")


def _fwd_op(kind: str):
    def impl(*flat) -> Tensor:
        # The launcher checks its arguments (fastmixer.mix_args, kernel dtypes) and makes them dense.
        args, kw = _split(flat)
        return _launch(kind, args, **kw)

    def fake(*flat) -> Tensor:
        # [B, S, C], contiguous, in promote(x, weights) dtype: what the launchers return.
        args, _ = _split(flat)
        return args.x.new_empty(args.x.shape, dtype=_out_dtype(args.x, args.fc1_weight))

    _IMPLS[f"{kind}_mix"] = impl
    op = torch.library.custom_op(f"fastmixer::{kind}_mix", impl, mutates_args=(), schema=f"({_MIX_SCHEMA}) -> Tensor")
    op.register_fake(fake)
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
    def impl(dout: Tensor, *flat) -> list[Tensor]:
        # -> [dx, d ln_weight, d ln_bias, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias], each in its input's dtype
        args, kw = _split(flat)
        return list(_launch_bwd(kind, dout, args, **kw))

    def fake(dout: Tensor, *flat) -> list[Tensor]:
        args, _ = _split(flat)
        return [torch.empty_like(t) for t in args[:-1]]  # all but branch_scale

    _IMPLS[f"{kind}_mix_bwd"] = impl
    schema = f"(Tensor dout, {_MIX_SCHEMA}) -> Tensor[]"
    op = torch.library.custom_op(f"fastmixer::{kind}_mix_bwd", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op


# Backward ops: Triton (see kernels/*_bwd.py). They recompute LN(x), fc1 and GELU from x, so the forward saves only
# its inputs (x and the parameters): no normalised or hidden activations are kept for backward.
_token_mix_bwd_op = _bwd_op("token")
_channel_mix_bwd_op = _bwd_op("channel")


def _setup_mix_context(ctx, inputs, output) -> None:
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale, eps, allow_tf32, *act = inputs
    ctx.save_for_backward(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
    ctx.eps = eps
    ctx.allow_tf32 = allow_tf32
    ctx.act = act[0] if act else "gelu"


def _mix_backward(bwd_op):
    def backward(ctx, dout: Tensor):
        saved = ctx.saved_tensors
        grads = bwd_op(dout, *saved, ctx.eps, ctx.allow_tf32, ctx.act)
        return (*grads, None, None, None, None)  # branch_scale, eps, allow_tf32, act

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
def _mix(kind: str, args: MixArgs, eps: float, act: str) -> Tensor:
    x = args.x
    mm_dtype = _autocast_dtype(x) if isinstance(x, Tensor) else None
    check_mix_args(f"{kind}_mix", kind, args, eps=eps, act=act, kernel=False, mixed=mm_dtype is not None)
    backend, allow_tf32 = resolve_backend(x), _allow_tf32()
    if backend == "triton" and selection.applies(x, get_backend()):  # auto on CUDA: the faster path (select.py)
        backend = selection.choose(kind, args, eps=eps, act=act, mm_dtype=mm_dtype, allow_tf32=allow_tf32)
    if backend == "reference":  # includes float64
        return reference.mix_ref(kind, args, eps=eps, act=act)
    if mm_dtype is not None:  # autocast: the GEMMs run in the autocast dtype; the residual stream keeps x's dtype
        mlp = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
        args = args._replace(**{name: getattr(args, name).to(mm_dtype) for name in mlp})
    op = torch.ops.fastmixer.token_mix if kind == "token" else torch.ops.fastmixer.channel_mix
    # the stem's output is a transposed view; the kernels (and the saved input) need x [B, S, C] dense
    args = args._replace(x=x.contiguous())
    with torch.autocast(x.device.type, enabled=False):
        return op(*args, eps, allow_tf32, act)  # the custom op's flat schema: MixArgs' tensors, eps, tf32, act


def _public_mix(kind: str, doc: str) -> Callable[..., Tensor]:
    """The public `{kind}_mix(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, *, eps=1e-6,
    branch_scale=None, act="gelu")`: one signature for both ops, each with its own docstring."""

    def mix(
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
        act: str = "gelu",
    ) -> Tensor:
        args = MixArgs(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
        return _mix(kind, args, eps, act)

    mix.__name__ = mix.__qualname__ = f"{kind}_mix"
    mix.__doc__ = doc
    return mix


token_mix = _public_mix(
    "token",
    """Fused token-mixing sub-block: x + s * fc2(GELU(fc1(LN(x)^T)))^T.

    x [B, S, C]; ln_* [C]; fc1_weight [Dt, S]; fc1_bias [Dt]; fc2_weight [S, Dt]; fc2_bias [S];
    branch_scale [B] (per-sample stochastic-depth factor, optional) -> [B, S, C] in x's dtype (autocast: promoted).
    act: "gelu" (exact erf, nn.GELU()) or "gelu_tanh" (nn.GELU(approximate="tanh")). Dtypes: fastmixer.mix_args.
    On the triton backend: a per-token LN statistics pass, then one kernel fusing LN, both GEMMs, GELU, biases and
    the residual (S > 256: GEMM 1 and GEMM 2 with the epilogue as two kernels); no transposed copy of x is made.
    """,
)
channel_mix = _public_mix(
    "channel",
    """Fused channel-mixing sub-block: x + s * fc2(GELU(fc1(LN(x)))).

    x [B, S, C]; ln_* [C]; fc1_weight [Dc, C]; fc1_bias [Dc]; fc2_weight [C, Dc]; fc2_bias [C];
    branch_scale [B] (optional) -> [B, S, C]. act: "gelu" (exact erf) or "gelu_tanh". On the triton backend: a
    LayerNorm pass, then GEMM1 with bias + GELU in its epilogue and GEMM2 with bias + residual (+ branch scale) in its
    epilogue.
    """,
)


def norm_pool(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Final LayerNorm + mean over tokens: x [B, S, C] -> [B, C] (one kernel on the triton backend)."""
    autocast = isinstance(x, Tensor) and _autocast_dtype(x) is not None
    check_norm_args("norm_pool", x, ln_weight, ln_bias, eps=eps, kernel=False, mixed=autocast)
    if autocast or resolve_backend(x) == "reference":
        return reference.norm_pool_ref(x, ln_weight, ln_bias, eps=eps)
    return torch.ops.fastmixer.norm_pool(x, ln_weight, ln_bias, eps)
