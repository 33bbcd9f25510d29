"""timm <-> fastmixer modules: `from_timm` / `to_timm` rebuild one Mixer as the other class, sharing (or copying) every
parameter and buffer, with the configuration read off the source's modules. (Checkpoint files: fastmixer.weights.)"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, PatchEmbed
from timm.models.mlp_mixer import MixerBlock as _TimmMixerBlock
from timm.models.mlp_mixer import MlpMixer as _TimmMlpMixer

from fastmixer.model import MixerBlock, MlpMixer

__all__ = ["from_timm", "mlp_ratio", "to_timm"]


def mlp_ratio(hidden: int, dim: int) -> float:
    """mlp ratio r with int(r * dim) == hidden (timm's rule), nudged up when hidden / dim rounds below."""
    r = hidden / dim
    while int(r * dim) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def _module_config(src: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild `src` (a timm or fastmixer MlpMixer with Mixer blocks)."""
    if not isinstance(src, _TimmMlpMixer):
        raise TypeError(f"expected a timm MlpMixer (e.g. timm.create_model('mixer_b16_224')), got {type(src).__name__}")
    blocks = list(src.blocks)
    if not blocks or not all(isinstance(b, _TimmMixerBlock) for b in blocks):
        kinds = sorted({type(b).__name__ for b in blocks})
        raise ValueError(f"expected MLP-Mixer blocks (timm MixerBlock), got {kinds}: ResMLP/gMLP models are not Mixers")
    if not isinstance(src.stem, PatchEmbed):
        raise ValueError(f"expected timm's PatchEmbed stem, got {type(src.stem).__name__}")
    b0, dim = blocks[0], src.embed_dim
    dims = {(b.mlp_tokens.fc1.out_features, b.mlp_channels.fc1.out_features) for b in blocks}
    if len(dims) != 1:
        raise ValueError(f"blocks have different MLP widths {sorted(dims)}; fastmixer builds uniform blocks")
    ((tokens_hidden, channels_hidden),) = dims
    norm = b0.norm1
    norm_layer = partial(type(norm), eps=norm.eps) if hasattr(norm, "eps") else type(norm)
    act = getattr(b0.mlp_tokens, "act", None)
    act_layer = nn.GELU if act is None else type(act)
    if isinstance(act, nn.GELU) and act.approximate != "none":
        act_layer = partial(nn.GELU, approximate=act.approximate)
    drop1 = getattr(b0.mlp_channels, "drop1", None)
    ph, pw = src.stem.patch_size
    return dict(
        num_classes=src.num_classes,
        img_size=src.stem.img_size,
        in_chans=src.in_chans,
        patch_size=ph if ph == pw else (ph, pw),
        num_blocks=len(blocks),
        embed_dim=dim,
        mlp_ratio=(mlp_ratio(tokens_hidden, dim), mlp_ratio(channels_hidden, dim)),
        mlp_layer=type(b0.mlp_tokens),
        norm_layer=norm_layer,
        act_layer=act_layer,
        drop_rate=float(src.head_drop.p) if isinstance(src.head_drop, nn.Dropout) else 0.0,
        proj_drop_rate=float(drop1.p) if isinstance(drop1, nn.Dropout) else 0.0,
        drop_path_rate=float(b0.drop_path.drop_prob) if isinstance(b0.drop_path, DropPath) else 0.0,
        stem_norm=not isinstance(src.stem.norm, nn.Identity),
        global_pool=src.global_pool,
    )


def _canonical(m: nn.Module) -> type:
    for ours, theirs in ((MlpMixer, _TimmMlpMixer), (MixerBlock, _TimmMixerBlock)):
        if type(m) in (ours, theirs):
            return theirs
    return type(m)


def _has_meta(m: nn.Module) -> bool:
    return any(t.is_meta for t in [*m.parameters(), *m.buffers()])


def _rebuild(src: nn.Module, cls: type, block_layer: type, share: bool) -> nn.Module:
    cfg = _module_config(src)
    with torch.device("meta"):  # no allocation, no init: every tensor is replaced below
        dst = cls(**cfg, block_layer=block_layer)
    src_mods = dict(src.named_modules())
    for name, mod in dst.named_modules():
        other = src_mods.get(name)
        if other is None or _canonical(other) is not _canonical(mod):
            found = "nothing" if other is None else type(other).__name__
            raise ValueError(f"cannot mirror {type(src).__name__}: module {name!r} is {found} there, not a {type(mod)}")
        for pname in list(mod._parameters):
            p = other._parameters.get(pname)
            if p is None:
                raise ValueError(f"cannot mirror {type(src).__name__}: {name}.{pname} has no counterpart")
            mod._parameters[pname] = p if share else nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for bname in list(mod._buffers):
            b = other._buffers.get(bname)
            if b is None:
                raise ValueError(f"cannot mirror {type(src).__name__}: buffer {name}.{bname} has no counterpart")
            mod._buffers[bname] = b if share else b.clone()
    left = [n for n, t in [*dst.named_parameters(), *dst.named_buffers()] if t.is_meta and not _has_meta(src)]
    if left:
        raise ValueError(f"cannot mirror {type(src).__name__}: {left[:5]} have no counterpart")
    dst.train(src.training)
    dst.grad_checkpointing = getattr(src, "grad_checkpointing", False)
    for attr in ("pretrained_cfg", "default_cfg"):
        if isinstance(getattr(src, attr, None), dict):
            setattr(dst, attr, dict(getattr(src, attr)))
    return dst


def from_timm(timm_model: nn.Module, share: bool = True) -> MlpMixer:
    """A fastmixer MlpMixer with `timm_model`'s configuration (inferred from its modules) and weights.

    share=True: the very same Parameter objects (same storage; training one trains the other); share=False: copies.
    """
    return _rebuild(timm_model, MlpMixer, MixerBlock, bool(share))


def to_timm(model: nn.Module, share: bool = True) -> _TimmMlpMixer:
    """The inverse of from_timm: a plain timm MlpMixer with `model`'s configuration and weights (shared or copied)."""
    return _rebuild(model, _TimmMlpMixer, _TimmMixerBlock, bool(share))
