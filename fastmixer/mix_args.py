"""The one argument contract of the fused ops, checked by the seam (fastmixer.ops) and by every Triton launcher.

A refusal is a ValueError (shape, device, value) or TypeError (type, dtype) that names the argument and what was
expected, raised before any kernel runs. The seam calls it with kernel=False, so both backends accept and refuse
exactly the same arguments (the check runs before the backend is chosen); the launchers call it with kernel=True,
which narrows the dtypes to the kernels' own and allows the mixed dtypes the seam produces under autocast.

The contract (x [B, S, C]; n = S for token mixing, C for channel mixing; D the hidden width):
  * x: a floating tensor of rank 3, float32/float16/bfloat16, or float64 (the seam runs float64 on the reference
    path; the kernels take no float64).
  * ln_weight, ln_bias [C]; fc1_weight [D, n], fc1_bias [D], fc2_weight [n, D], fc2_bias [n]; branch_scale [B] or
    None. All on x's device; all required but branch_scale. Any strides (copied dense where a kernel needs it).
  * dtypes: the four MLP tensors share one dtype W. Outside autocast W is x's dtype and the LayerNorm parameters are
    x's dtype or float32 (what torch's layer_norm takes); under autocast (mixed=True) any float dtypes mix. float64 is
    all or nothing: x, LayerNorm and MLP parameters all float64. branch_scale: any float dtype (read as fp32).
  * eps: a finite real number >= 0; act: one of ACTS.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Activations of the fused MLP (timm's names): exact erf GELU (nn.GELU()) and its tanh approximation
# (nn.GELU(approximate="tanh"), Flax's default, which Google's original Mixer checkpoints were trained with).
ACTS = ("gelu", "gelu_tanh")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take
OP_DTYPES = (*KERNEL_DTYPES, torch.float64)  # what the ops take (float64: reference path)


def act_from_approximate(approximate: str) -> str:
    """nn.GELU's `approximate` ("none" | "tanh") -> the fused ops' `act` name."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
    return "gelu_tanh" if approximate == "tanh" else "gelu"


def approximate_of(act: str) -> str:
    """The fused ops' `act` name -> F.gelu's `approximate`."""
    return "tanh" if act == "gelu_tanh" else "none"


class MixArgs(NamedTuple):
    """The tensors of one token_mix / channel_mix call (see the module docstring for shapes and dtypes)."""

    x: Tensor
    ln_weight: Tensor
    ln_bias: Tensor
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor
    branch_scale: Tensor | None = None

    def contiguous(self) -> MixArgs:
        """Every tensor dense (a no-op, no copy, for parameters and already dense activations)."""
        return MixArgs(*(None if t is None else t.contiguous() for t in self))


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def _check_float_dtype(name: str, arg: str, t: Tensor, allowed: tuple[torch.dtype, ...], kernel: bool) -> None:
    if t.dtype in allowed:
        return
    hint = " (float64 runs on the reference path, which fastmixer.ops routes it to)" if kernel else ""
    raise TypeError(f"{name}: {arg} must be {_names(allowed)}{hint}, got {t.dtype}")


def check_eps_act(name: str, eps: float, act: str | None = None) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name}: eps must be a real number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps}")
    if act is not None and act not in ACTS:
        raise ValueError(f"{name}: act must be one of {ACTS}, got {act!r}")


def _check_x(name: str, x: object, kernel: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: x must be [B, S, C] (rank 3), got shape {tuple(x.shape)}")
    allowed = KERNEL_DTYPES if kernel else OP_DTYPES
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be floating point ({_names(allowed)}), got {x.dtype}")
    _check_float_dtype(name, "x", x, allowed, kernel)


def _check_tensor(name: str, arg: str, t: object, shape: tuple[int, ...], x: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: {arg} must have shape {shape} for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name}: {arg} is on {t.device} but x is on {x.device}; move both to one device")
    if not t.is_floating_point():
        raise TypeError(f"{name}: {arg} must be floating point, got {t.dtype}")


def _check_ln_dtypes(name: str, x: Tensor, ln_weight: Tensor, ln_bias: Tensor, mixed: bool, kernel: bool) -> None:
    # Outside autocast torch's layer_norm takes parameters in x's dtype, or fp32 ones with fp16/bf16 x; under autocast
    # (and in the kernels, which read them as fp32) any float dtype.
    if mixed:
        _check_float_dtype(name, "ln_weight", ln_weight, KERNEL_DTYPES, kernel)
    elif ln_weight.dtype not in (x.dtype, torch.float32):
        also = "" if x.dtype == torch.float32 else " or torch.float32"
        raise TypeError(f"{name}: ln_weight must be x's dtype {x.dtype}{also}, got {ln_weight.dtype}")
    if ln_bias.dtype != ln_weight.dtype:
        raise TypeError(f"{name}: ln_bias must have ln_weight's dtype {ln_weight.dtype}, got {ln_bias.dtype}")


def _check_float64(name: str, named: dict[str, Tensor], kernel: bool) -> None:
    f64 = [arg for arg, t in named.items() if t.dtype == torch.float64]
    if not f64:
        return
    if kernel:
        raise TypeError(
            f"{name}: {f64[0]} is torch.float64 but the Triton kernels take {_names(KERNEL_DTYPES)} (fastmixer.ops "
            "runs float64 on the reference path)"
        )
    if len(f64) != len(named):
        got = ", ".join(f"{arg} {str(t.dtype).removeprefix('torch.')}" for arg, t in named.items())
        raise TypeError(
            f"{name}: float64 runs on the reference path and needs x and every LayerNorm/MLP parameter in float64 "
            f"(model.double()); got {got}"
        )


def check_mix_args(
    name: str,
    kind: str,
    args: MixArgs,
    *,
    eps: float,
    act: str,
    kernel: bool,
    mixed: bool,
    dout: Tensor | None = None,
) -> None:
    """Validate one token_mix (kind="token") / channel_mix (kind="channel") call; `name` prefixes every message.

    kernel: check what the Triton kernels take (float64 refused). mixed: x and the MLP weights may differ in dtype
    (autocast at the seam; the launchers always, as the seam hands them autocast-cast weights). dout: the upstream
    gradient of a backward call ([B, S, C], any kernel float dtype)."""
    x = args.x
    _check_x(name, x, kernel)
    B, S, C = x.shape
    n = S if kind == "token" else C
    w1 = args.fc1_weight
    hidden = w1.shape[0] if isinstance(w1, Tensor) and w1.dim() == 2 else -1
    expected = {
        "ln_weight": (C,),
        "ln_bias": (C,),
        "fc1_weight": (hidden, n),
        "fc1_bias": (hidden,),
        "fc2_weight": (n, hidden),
        "fc2_bias": (n,),
    }
    named = args._asdict()
    for arg, shape in expected.items():
        t = named[arg]
        if t is None:
            raise ValueError(f"{name}: {arg} is required (the fused Mixer MLP has LayerNorm affine and biases)")
        if arg == "fc1_weight" and isinstance(t, Tensor) and hidden < 1:
            raise ValueError(f"{name}: fc1_weight must have shape (D, {n}) with D >= 1, got {tuple(t.shape)}")
        _check_tensor(name, arg, t, shape, x)
    if args.branch_scale is not None:
        _check_tensor(name, "branch_scale", args.branch_scale, (B,), x)
        _check_float_dtype(name, "branch_scale", args.branch_scale, OP_DTYPES, kernel)
    if dout is not None:
        if not isinstance(dout, Tensor):
            raise TypeError(f"{name}: dout must be a torch.Tensor, got {type(dout).__name__}")
        if tuple(dout.shape) != tuple(x.shape):
            raise ValueError(f"{name}: dout must have x's shape {tuple(x.shape)}, got {tuple(dout.shape)}")
        if dout.device != x.device:
            raise ValueError(f"{name}: dout is on {dout.device} but x is on {x.device}")
        _check_float_dtype(name, "dout", dout, KERNEL_DTYPES if kernel else OP_DTYPES, kernel)

    # dtypes: float64 all or nothing; x vs the MLP weights; the MLP tensors share one dtype; LayerNorm parameters.
    w_dtype = w1.dtype
    _check_float64(name, {"x": x, "ln_weight": args.ln_weight, "ln_bias": args.ln_bias, "fc1_weight": w1}, kernel)
    if not mixed and x.dtype != w_dtype:
        raise TypeError(
            f"{name}: x is {x.dtype} but the weights are {w_dtype}; cast the model (model.to(dtype)) or run "
            "under torch.autocast"
        )
    _check_float_dtype(name, "fc1_weight", w1, KERNEL_DTYPES if kernel else OP_DTYPES, kernel)
    for arg in ("fc1_bias", "fc2_weight", "fc2_bias"):
        if named[arg].dtype != w_dtype:
            raise TypeError(f"{name}: {arg} must have fc1_weight's dtype {w_dtype}, got {named[arg].dtype}")
    _check_ln_dtypes(name, x, args.ln_weight, args.ln_bias, mixed, kernel)
    check_eps_act(name, eps, act)


def check_launch_args(
    name: str, kind: str, args: MixArgs, *, eps: float, act: str, dout: Tensor | None = None
) -> tuple[Tensor | None, MixArgs]:
    """What a Triton launcher calls: the contract with the kernels' dtypes (kernel=True; mixed x/W allowed, as the seam
    hands the launchers autocast-cast weights), then every tensor dense. -> (dout or None, args), both dense."""
    check_mix_args(name, kind, args, eps=eps, act=act, kernel=True, mixed=True, dout=dout)
    return (None if dout is None else dout.contiguous()), args.contiguous()


def check_norm_args(
    name: str, x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float, kernel: bool, mixed: bool
) -> None:
    """Validate one norm_pool call (x [B, S, C] with S >= 1, ln_* [C]) under the same dtype rules as the mixes."""
    _check_x(name, x, kernel)
    C = x.shape[2]
    for arg, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is None:
            raise ValueError(f"{name}: {arg} is required")
        _check_tensor(name, arg, t, (C,), x)
    if x.shape[1] == 0:
        raise ValueError(f"{name}: x has no tokens (S = 0): the mean over tokens is undefined")
    _check_float64(name, {"x": x, "ln_weight": ln_weight, "ln_bias": ln_bias}, kernel)
    _check_ln_dtypes(name, x, ln_weight, ln_bias, mixed, kernel)
    check_eps_act(name, eps)
