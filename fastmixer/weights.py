"""Checkpoint formats: timm `.pth`/`.safetensors`, mmpretrain `.pth` and Google's JAX `.npz` (timm <-> fastmixer
modules: fastmixer.timm_convert).

Every load goes through one path:

    read the file (format sniffed from its bytes, not its name) -> flat {name: tensor}
    unwrap `state_dict` / `model`, strip `module.` / `_orig_mod.` -> the weights
    detect the layout from the key names and convert -> timm-keyed state_dict (+ the source name of each key)
    ONE validation against the model (missing / unexpected / wrong shape, all listed in one CheckpointError)
    only then copy into the model (and set LayerNorm eps to the layout's, with a warning when it changes).

So a load never half-succeeds: when the checkpoint does not fit, the model is untouched. A truncated or corrupt file
raises ValueError naming the file and the format it looked like.

torch files are only ever read with torch.load(weights_only=True): no pickled code runs. Training checkpoints of
mmengine (mmpretrain 1.x) also pickle its message hub (HistoryBuffer objects holding numpy arrays); those known
classes are mapped to inert stand-ins that keep their state as data, so the weights load without mmengine installed.
A file naming any other class is refused with the full list of the classes it names (read from the pickle's opcodes).

Layouts (C = embed dim, S = tokens, Dt/Dc = token/channel MLP hidden dims, N = classes, p = patch size):

  timm        stem.proj.weight [C, in, p, p], blocks.i.norm1/mlp_tokens.fc1/fc2/norm2/mlp_channels.fc1/fc2, norm, head
  mmpretrain  backbone.patch_embed.projection, backbone.layers.i.{ln1, token_mix.layers.0.0 (fc1), token_mix.layers.1
              (fc2), ln2, channel_mix.layers.0.0, channel_mix.layers.1}, backbone.ln1 (final norm), head.fc;
              LayerNorm eps 1e-5 (mmcv's default)
  JAX (Flax)  stem/kernel [p, p, in, C] (HWIO), MixerBlock_i/LayerNorm_0|1/scale|bias,
              MixerBlock_i/token_mixing|channel_mixing/Dense_0|1/kernel [in, out] (torch weight transposed),
              pre_head_layer_norm/scale|bias, head/kernel [C, N]; LayerNorm eps 1e-6 (Flax's default)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from fastmixer.model import MlpMixer
from fastmixer.timm_convert import mlp_ratio

__all__ = [
    "CheckpointError",
    "LoadResult",
    "convert_state_dict",
    "detect_layout",
    "infer_config",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
]

LAYOUTS = ("timm", "mmpretrain", "jax")
# LayerNorm eps each layout's weights were trained with (timm's Mixer weights are the JAX ones: 1e-6).
LAYOUT_EPS = {"timm": None, "mmpretrain": 1e-5, "jax": 1e-6}
_MAX_LISTED = 20  # keys listed per category in an error message


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; `missing`, `unexpected` and `mismatched` hold the full lists."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


class LoadResult(NamedTuple):
    """What a non-strict load skipped (timm-style key names; empty lists after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# ------------------------------------------------------------------------------------------------------ file reading
def _sniff(path: Path) -> str:
    """The container a file holds, from its first bytes: 'zip' (torch .pth or .npz), 'safetensors', 'pickle'."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): the file is truncated or was never written")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    # safetensors: u64 little-endian header length, then a JSON object.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"  # a header length past the end of the file is reported as truncated by the reader
    if head[:1] == b"\x80":  # pickle protocol opcode: torch's legacy (non-zip) format
        return "pickle"
    raise ValueError(
        f"checkpoint {str(path)!r} is not a recognised file format (first bytes {head[:8]!r}); expected a torch "
        "checkpoint (.pth/.pt/.bin), a .safetensors file or a numpy .npz (Google's JAX Mixer checkpoints)"
    )


def _safe_extra_globals() -> list[Any]:
    # Harmless non-tensor objects found in real training checkpoints: timm's train.py stores its argparse
    # Namespace under 'args'; mmengine metadata may hold numpy scalars and dtypes.
    out: list[Any] = [argparse.Namespace, np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            scalar = __import__(mod, fromlist=["scalar"]).scalar
            break
        except (ImportError, AttributeError):
            continue
    else:
        scalar = None
    if scalar is not None:  # numpy scalars, under numpy 1's and numpy 2's module names alike
        out += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    # dtype objects of numbers, booleans and strings (not object/void: those carry Python objects or raw layouts)
    out += list({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGmMSU"})
    return out


# ------------------------------------------------------------------------------------- mmengine training checkpoints
class _StandIn:
    """Inert stand-in for a known non-tensor class in a training checkpoint (mmengine's HistoryBuffer, MessageHub,
    numpy arrays): building it stores the pickled arguments and state as plain data and runs nothing else. Every
    value inside that state is itself unpickled by torch's weights_only unpickler with the same allowlist."""

    stands_for = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.stands_for}>"


def _stand_in(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[1], (_StandIn,), {"stands_for": full_name, "__module__": __name__})


def _reconstruct_stand_in(cls: Any, *args: Any) -> _StandIn:
    # numpy's array pickle: _reconstruct(ndarray, shape, dtype-char) then BUILD(version, shape, dtype, fortran, data)
    return _NDARRAY(cls, *args)


_NDARRAY = _stand_in("numpy.ndarray")
# What mmengine's Runner.save_checkpoint pickles besides tensors and plain containers: message_hub.state_dict() holds
# HistoryBuffer objects (each with two numpy arrays); older mmengine pickled the MessageHub itself.
_STAND_INS: dict[str, Any] = {
    "mmengine.logging.history_buffer.HistoryBuffer": _stand_in("mmengine.logging.history_buffer.HistoryBuffer"),
    "mmengine.logging.message_hub.MessageHub": _stand_in("mmengine.logging.message_hub.MessageHub"),
    "numpy.ndarray": _NDARRAY,
    "numpy.core.multiarray._reconstruct": _reconstruct_stand_in,
    "numpy._core.multiarray._reconstruct": _reconstruct_stand_in,
}


def _unsafe_globals(path: Path) -> list[str] | None:
    """The classes and functions a torch zip checkpoint names that the weights_only allowlist in force refuses, read
    from its pickle opcodes without unpickling anything (None when the file cannot be scanned that way)."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return None
    try:
        return sorted(scan(str(path)))
    except Exception:  # legacy (non-zip) format, or a pickle too broken to scan
        return None


def _unpickler_reason(e: Exception) -> str:
    """torch's weights_only error reduced to its cause ('Unsupported global: GLOBAL x.Y ...')."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(e), re.S)
    return " ".join((m.group(1) if m else str(e).splitlines()[0] if str(e) else "").split())


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), then, for a checkpoint with Python objects besides tensors: the same with
    harmless numpy/argparse globals allowed and the known mmengine/numpy classes mapped to inert stand-ins. Anything
    else is refused with the full list of classes the file names (read statically: nothing is unpickled)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        err: Exception = e
    unsupported = "unsupported global" in str(err).lower()
    if unsupported and hasattr(torch.serialization, "safe_globals"):
        allowed = [*_safe_extra_globals(), *((obj, name) for name, obj in _STAND_INS.items())]
        with torch.serialization.safe_globals(allowed):
            refused = _unsafe_globals(path)
            if refused:
                raise ValueError(
                    f"torch checkpoint {str(path)!r} holds Python objects fastmixer does not load (nothing in it was "
                    f"unpickled or run): {', '.join(refused)}. Known training-checkpoint classes (mmengine's "
                    "HistoryBuffer and MessageHub, numpy arrays and scalars, argparse.Namespace) are read as inert "
                    "data; these are not. If you trust the file, re-save only its weights: "
                    "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')"
                ) from err
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                err = e
    if "unsupported global" in str(err).lower():
        raise ValueError(
            f"torch checkpoint {str(path)!r} holds Python objects beyond tensors and plain containers, which fastmixer "
            f"does not unpickle (torch.load(weights_only=True)): {_unpickler_reason(err)}. If you trust the file, "
            "re-save only its weights: torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')"
        ) from err
    raise ValueError(
        f"could not read torch checkpoint {str(path)!r}: the file is truncated or corrupt ({type(err).__name__}: "
        f"{_unpickler_reason(err)})"
    ) from err


def _read_npz(path: Path) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ValueError(
            f"could not read numpy .npz checkpoint {str(path)!r}: the file is truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e
    out = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise ValueError(f".npz checkpoint {str(path)!r}: array {k!r} has dtype {a.dtype}, expected numbers")
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise ValueError(
            f"could not read .safetensors checkpoint {str(path)!r}: the file is truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """A loaded torch object -> its flat {name: tensor} weights (bare, or under 'state_dict' / 'model')."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint {str(path)!r} holds no tensors at the top level or under 'state_dict'/'model'; top-level "
            f"keys: {sorted(map(str, obj))[:_MAX_LISTED]}"
        )
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if others:
        raise ValueError(f"checkpoint {str(path)!r}: the state_dict has non-tensor entries {others[:_MAX_LISTED]}")
    return tensors


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read any supported file into its flat {name: tensor} weights, in the file's own naming (CPU tensors).

    torch files are loaded with weights_only=True and unwrapped from 'state_dict'/'model'; a 'module.' (DDP),
    '_orig_mod.' (torch.compile), 'opt/target/' or 'params/' (Flax) prefix shared by every key is removed.
    Raises ValueError for unreadable files.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    kind = _sniff(path)
    if kind == "safetensors":
        sd = _read_safetensors(path)
    elif kind == "pickle":
        sd = _unwrap(_torch_load(path), path)
    else:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(
                f"could not read checkpoint {str(path)!r}: it starts like a zip archive (torch .pth or numpy .npz) "
                f"but is truncated or corrupt ({type(e).__name__}: {e})"
            ) from e
        if any(n.endswith("data.pkl") for n in names):
            sd = _unwrap(_torch_load(path), path)
        elif names and all(n.endswith(".npy") for n in names):
            sd = _read_npz(path)
        else:
            raise ValueError(
                f"checkpoint {str(path)!r} is a zip archive but neither a torch checkpoint nor a numpy .npz "
                f"(members: {names[:5]})"
            )
    # DDP / torch.compile wrappers; Flax trees saved whole (optimizer target or {'params': ...}).
    for prefix in ("module.", "_orig_mod.", "opt/target/", "params/"):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------------------------------------ layout conversion
def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """'timm', 'mmpretrain' or 'jax' from the key names; ValueError for anything else."""
    keys = list(state_dict)
    if any(k == "stem/kernel" or k.startswith("MixerBlock_") or k.startswith("pre_head_layer_norm/") for k in keys):
        return "jax"
    if any(k.startswith(("backbone.", "head.fc.")) or ".token_mix.layers." in k for k in keys):
        return "mmpretrain"
    if any(k.startswith(("stem.proj.", "blocks.")) for k in keys):
        return "timm"
    raise ValueError(
        "unrecognised checkpoint layout: expected MLP-Mixer weights in timm (stem.proj.weight, blocks.0.*), mmpretrain "
        f"(backbone.patch_embed.projection.*, backbone.layers.0.*) or JAX (stem/kernel, MixerBlock_0/*) naming; "
        f"found keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    )


_MM_BLOCK = {
    "ln1": "norm1",
    "token_mix.layers.0.0": "mlp_tokens.fc1",
    "token_mix.layers.1": "mlp_tokens.fc2",
    "ln2": "norm2",
    "channel_mix.layers.0.0": "mlp_channels.fc1",
    "channel_mix.layers.1": "mlp_channels.fc2",
}
_MM_TOP = {"patch_embed.projection": "stem.proj", "patch_embed.norm": "stem.norm", "ln1": "norm"}
_JAX_BLOCK = {
    "LayerNorm_0": "norm1",
    "token_mixing/Dense_0": "mlp_tokens.fc1",
    "token_mixing/Dense_1": "mlp_tokens.fc2",
    "LayerNorm_1": "norm2",
    "channel_mixing/Dense_0": "mlp_channels.fc1",
    "channel_mixing/Dense_1": "mlp_channels.fc2",
}
_JAX_TOP = {"stem": "stem.proj", "pre_head_layer_norm": "norm", "head": "head"}
_JAX_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _mm_key(k: str) -> str | None:
    if k.startswith("head.fc."):
        return "head." + k[len("head.fc.") :]
    body = k[len("backbone.") :] if k.startswith("backbone.") else k
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", body)
    if m and m.group(2) in _MM_BLOCK:
        return f"blocks.{m.group(1)}.{_MM_BLOCK[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(.+)\.(weight|bias)", body)
    if m and m.group(1) in _MM_TOP:
        return f"{_MM_TOP[m.group(1)]}.{m.group(2)}"
    return None


def _jax_key(k: str, v: Tensor) -> tuple[str, Tensor] | None:
    m = re.fullmatch(r"MixerBlock_(\d+)/(.+)/(kernel|scale|bias)", k)
    if m and m.group(2) in _JAX_BLOCK:
        name, leaf = f"blocks.{m.group(1)}.{_JAX_BLOCK[m.group(2)]}", m.group(3)
    else:
        m = re.fullmatch(r"(stem|pre_head_layer_norm|head)/(kernel|scale|bias)", k)
        if not m:
            return None
        name, leaf = _JAX_TOP[m.group(1)], m.group(2)
    if leaf == "kernel" and name == "stem.proj" and v.dim() == 4:
        v = v.permute(3, 2, 0, 1)  # HWIO [p, p, in, C] -> OIHW [C, in, p, p]
    elif leaf == "kernel" and v.dim() == 2:
        v = v.t()  # Dense kernel [in, out] -> Linear weight [out, in]
    return f"{name}.{_JAX_LEAF[leaf]}", v


def convert_state_dict(state_dict: Mapping[str, Any], layout: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """A checkpoint's weights in any supported layout -> (timm-keyed state_dict, {timm key: source key}).

    Keys that have no timm counterpart are kept under their source name (so they surface as 'unexpected').
    numpy arrays become tensors; JAX kernels are permuted/transposed into torch's layout (as views).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    layout = detect_layout(state_dict) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for k, v in state_dict.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, Tensor):
            raise TypeError(f"checkpoint entry {k!r} is a {type(v).__name__}, expected a tensor or numpy array")
        if layout == "mmpretrain" and k.startswith("data_preprocessor."):
            continue  # mmpretrain's input mean/std constants, not weights
        new: str | None = k
        if layout == "mmpretrain":
            new = _mm_key(k)
        elif layout == "jax":
            hit = _jax_key(k, v)
            new, v = hit if hit is not None else (None, v)
        new = k if new is None else new
        if new in out:
            raise ValueError(f"checkpoint keys {origin[new]!r} and {k!r} both map to {new!r}")
        out[new], origin[new] = v, k
    return out, origin


# ------------------------------------------------------------------------------------------------------- validation
def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _validate(
    model: nn.Module, sd: Mapping[str, Tensor], origin: Mapping[str, str], strict: bool, what: str
) -> tuple[list[str], list[str]]:
    """Raise one CheckpointError listing every problem, before anything is copied. Returns (missing, unexpected)."""
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unexpected = [origin.get(k, k) for k in sd if k not in target]
    mismatched = []
    for k, v in sd.items():
        if k not in target:
            continue
        src = f" (from {origin[k]})" if origin.get(k, k) != k else ""
        if tuple(v.shape) != tuple(target[k].shape):
            mismatched.append(f"{k}{src}: checkpoint {list(v.shape)} vs model {list(target[k].shape)}")
        elif target[k].is_floating_point() and not v.is_floating_point():
            mismatched.append(f"{k}{src}: checkpoint dtype {v.dtype} vs model {target[k].dtype}")
    if mismatched or (strict and (missing or unexpected)):
        parts = [f"{what} does not fit {type(model).__name__}; the model was left unchanged."]
        if missing:
            parts.append(f"missing ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected ({len(unexpected)}): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"wrong shape ({len(mismatched)}): {_fmt(mismatched)}")
        parts.append(
            "Build a model that fits with fastmixer.weights.model_from_checkpoint(path), or pass strict=False to "
            "load the matching keys (shape mismatches are always refused)."
        )
        raise CheckpointError("\n  ".join(parts), missing, unexpected, mismatched)
    return missing, unexpected


def _set_norm_eps(model: nn.Module, eps: float | None, why: str) -> None:
    if eps is None:
        return
    changed = sorted({m.eps for m in model.modules() if isinstance(m, nn.LayerNorm) and m.eps != eps})
    if not changed:
        return
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    warnings.warn(f"{why}: set every LayerNorm eps from {changed} to {eps} to reproduce its outputs", stacklevel=3)


def _load_converted(
    model: nn.Module, sd: dict[str, Tensor], origin: dict[str, str], layout: str, strict: bool, what: str
) -> LoadResult:
    missing, unexpected = _validate(model, sd, origin, strict, what)
    target = model.state_dict()
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    _set_norm_eps(model, LAYOUT_EPS[layout], f"{what} is a {layout} checkpoint")
    return LoadResult(missing, unexpected)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load a timm (.pth/.safetensors, bare or under 'state_dict'/'model'), mmpretrain (.pth) or JAX (.npz) checkpoint.

    The format is detected from the file's bytes and key names. Every key is checked before anything is copied: missing,
    unexpected or mis-shaped keys raise one CheckpointError (a ValueError) listing them all, with the model unchanged.
    strict=False loads the keys that match and returns LoadResult(missing_keys, unexpected_keys); shape mismatches
    still raise. LayerNorm eps is set to the layout's (mmpretrain 1e-5, JAX 1e-6) with a warning when it changes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    raw = read_checkpoint(path)
    layout = detect_layout(raw)
    sd, origin = convert_state_dict(raw, layout)
    return _load_converted(model, sd, origin, layout, bool(strict), f"checkpoint {str(path)!r} ({layout})")


# ------------------------------------------------------------------------------------------------ config inference
def _infer(sd: Mapping[str, Tensor], layout: str, img_size: Any = None) -> dict[str, Any]:
    for k in ("stem.proj.weight", "blocks.0.mlp_tokens.fc1.weight", "blocks.0.mlp_channels.fc1.weight"):
        if k not in sd or sd[k].dim() not in (2, 4):
            raise ValueError(f"cannot infer the architecture: the checkpoint has no usable {k!r}")
    stem = sd["stem.proj.weight"]  # [C, in, ph, pw]
    if stem.dim() != 4:
        raise ValueError(f"stem.proj.weight must be [C, in_chans, p, p], got {list(stem.shape)}")
    embed_dim, in_chans, ph, pw = stem.shape
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if idx != list(range(len(idx))):
        raise ValueError(f"cannot infer the architecture: block indices {idx} are not 0..N-1")
    tokens_hidden, seq_len = sd["blocks.0.mlp_tokens.fc1.weight"].shape
    channels_hidden = sd["blocks.0.mlp_channels.fc1.weight"].shape[0]
    if img_size is None:
        grid = math.isqrt(seq_len)
        if grid * grid != seq_len:
            raise ValueError(f"the checkpoint has {seq_len} tokens, not a square grid: pass img_size=(H, W) explicitly")
        img_size = grid * ph if ph == pw else (grid * ph, grid * pw)
    head = sd.get("head.weight")
    return dict(
        img_size=img_size,
        patch_size=int(ph) if ph == pw else (int(ph), int(pw)),
        in_chans=int(in_chans),
        num_blocks=len(idx),
        embed_dim=int(embed_dim),
        mlp_ratio=(mlp_ratio(int(tokens_hidden), int(embed_dim)), mlp_ratio(int(channels_hidden), int(embed_dim))),
        num_classes=int(head.shape[0]) if head is not None else 0,
        stem_norm="stem.norm.weight" in sd,
        norm_eps=LAYOUT_EPS[layout] or 1e-6,
    )


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """MlpMixer arguments that fit a checkpoint's weights (any layout): img_size (square, from the token count),
    patch_size, in_chans, num_blocks, embed_dim, mlp_ratio, num_classes, stem_norm, norm_eps.
    `MlpMixer(**infer_config(sd))` builds the matching architecture."""
    layout = detect_layout(state_dict)
    sd, _ = convert_state_dict(state_dict, layout)
    return _infer(sd, layout)


def model_from_checkpoint(
    path: str | os.PathLike, strict: bool = True, gelu: str | None = None, **overrides: Any
) -> MlpMixer:
    """Build the fastmixer MlpMixer a checkpoint file describes (any supported format) and load it.

    gelu: None or "erf" builds timm's exact GELU; "tanh" builds nn.GELU(approximate="tanh"), the activation Google's
    JAX/Flax Mixer used, so a Google .npz gives the original model's numbers (both stay on the fused kernels).
    `overrides` go to MlpMixer (e.g. img_size=(H, W) for a non-square token grid, drop_path_rate=0.1).
    """
    if gelu is not None:
        if gelu not in ("erf", "tanh"):
            raise ValueError(
                f"gelu must be 'erf' (timm's exact GELU) or 'tanh' (JAX/Flax's approximation), got {gelu!r}"
            )
        if "act_layer" in overrides:
            raise ValueError("pass either gelu or act_layer, not both")
        overrides["act_layer"] = partial(nn.GELU, approximate="tanh" if gelu == "tanh" else "none")
    raw = read_checkpoint(path)
    layout = detect_layout(raw)
    sd, origin = convert_state_dict(raw, layout)
    cfg = {**_infer(sd, layout, overrides.get("img_size")), **overrides}
    if "norm_layer" in overrides:
        cfg.pop("norm_eps")
    model = MlpMixer(**cfg)
    _load_converted(model, sd, origin, layout, bool(strict), f"checkpoint {str(path)!r} ({layout})")
    return model
