"""fastmixer's MLP-Mixer: timm's MlpMixer / MixerBlock, subclassed so that constructor, module names, state_dict keys,
init and every method a timm user touches stay timm's, with the block forward routed through fastmixer.ops.

Data path per block: x [B, S, C] -> u = token_mix(x) -> channel_mix(u), each one fused op (see fastmixer/ops.py).
The fused ops take exact GELU (nn.GELU(), timm's default) and its tanh approximation (nn.GELU(approximate="tanh"),
or timm's GELU / GELUTanh layers). Where a configuration cannot be fused exactly (a non-LayerNorm norm, another
activation, a custom MLP, or MLP dropout while training), the block runs timm's own forward, so the result is always
timm's.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.models._manipulate import checkpoint_seq
from timm.models.mlp_mixer import MixerBlock as _TimmMixerBlock
from timm.models.mlp_mixer import MlpMixer as _TimmMlpMixer
from torch import Tensor

from fastmixer.mix_args import act_from_approximate
from fastmixer.ops import channel_mix, norm_pool, token_mix

try:  # timm's own GELU layers (timm.layers.activations), fused like nn.GELU()
    from timm.layers.activations import GELU as _TimmGELU
    from timm.layers.activations import GELUTanh as _TimmGELUTanh

    _TIMM_ACTS = {_TimmGELU: "gelu", _TimmGELUTanh: "gelu_tanh"}
except ImportError:  # an older timm without them
    _TIMM_ACTS = {}

__all__ = ["MixerBlock", "MlpMixer"]

# torch.fx: each fused op is ONE opaque call_function node under symbolic tracing (torch.fx.symbolic_trace, timm's
# and torchvision's FX feature extractors), instead of a trace through its Python dispatch (backend choice, autocast,
# custom-op launch). The traced graph calls these very functions, so it computes the model's own outputs.
torch.fx.wrap("token_mix")
torch.fx.wrap("channel_mix")
torch.fx.wrap("norm_pool")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast there
        return False


def _fused_act(act: nn.Module) -> str | None:
    """The fused ops' `act` name for an MLP's activation module, or None when it has no fused form."""
    if type(act) is nn.GELU and act.approximate in ("none", "tanh"):
        return act_from_approximate(act.approximate)
    return _TIMM_ACTS.get(type(act))


def _dropout_p(mlp: nn.Module) -> float:
    return max(float(getattr(mlp, name).p) for name in ("drop1", "drop2") if isinstance(getattr(mlp, name), nn.Dropout))


class MixerBlock(_TimmMixerBlock):
    """timm's MixerBlock (same arguments and keys); forward = two fused ops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mlps = (self.mlp_tokens, self.mlp_channels)
        self.fusable = (
            all(type(m) is Mlp for m in mlps)
            and all(
                type(n) is nn.LayerNorm and n.elementwise_affine and n.bias is not None
                for n in (self.norm1, self.norm2)
            )
            and all(_fused_act(m.act) is not None for m in mlps)
            and all(isinstance(m.norm, nn.Identity) and m.fc1.bias is not None and m.fc2.bias is not None for m in mlps)
        )
        self.mlp_drop = max((_dropout_p(m) for m in mlps), default=0.0) if self.fusable else 0.0
        # fused activation of the token and channel MLPs ("gelu" | "gelu_tanh")
        self.acts = tuple(_fused_act(m.act) for m in mlps) if self.fusable else (None, None)

    def _branch_scale(self, x: Tensor) -> Tensor | None:
        # Per-sample stochastic depth as a [B] factor applied inside the fused residual epilogue. Same RNG draws as
        # timm's DropPath (a [B, 1, 1] bernoulli_ in x's dtype), so a seeded run drops the same samples.
        if not (self.training and isinstance(self.drop_path, DropPath) and self.drop_path.drop_prob > 0):
            return None
        keep = 1.0 - self.drop_path.drop_prob
        mask = x.new_empty((x.shape[0], 1, 1)).bernoulli_(keep)
        if keep > 0.0 and self.drop_path.scale_by_keep:
            mask.div_(keep)
        return mask.view(-1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fusable or (self.training and self.mlp_drop > 0):
            return super().forward(x)
        x = self._fused(token_mix, x, self.norm1, self.mlp_tokens, self.acts[0])
        return self._fused(channel_mix, x, self.norm2, self.mlp_channels, self.acts[1])

    def _fused(self, op, x: Tensor, norm: nn.Module, mlp: nn.Module, act: str) -> Tensor:
        # one sub-block through the seam: x + (stochastic-depth scale) * mlp(norm(x)), fused
        w = (norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
        return op(x, *w, eps=norm.eps, branch_scale=self._branch_scale(x), act=act)


class MlpMixer(_TimmMlpMixer):
    """timm's MlpMixer with fused blocks.

    Takes every timm constructor argument (num_classes, img_size, in_chans, patch_size, num_blocks, embed_dim,
    mlp_ratio, block_layer, mlp_layer, norm_layer, act_layer, drop_rate, proj_drop_rate, drop_path_rate, nlhb,
    stem_norm, global_pool, ...) plus `norm_eps`, a shortcut for norm_layer=partial(nn.LayerNorm, eps=norm_eps)
    (1e-6 for timm/JAX weights, 1e-5 for mmpretrain's).
    """

    def __init__(self, *args: Any, norm_eps: float | None = None, **kwargs: Any) -> None:
        if len(args) < 8:  # block_layer is timm's 8th positional argument
            kwargs.setdefault("block_layer", MixerBlock)
        if norm_eps is not None:
            if "norm_layer" in kwargs:
                raise ValueError("pass either norm_eps or norm_layer, not both")
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(norm_eps))
        super().__init__(*args, **kwargs)
        self.pretrained_cfg: dict[str, Any] = getattr(self, "pretrained_cfg", {})

    # -------------------------------------------------------------------------------------------- input checking
    def check_input(self, x: Any) -> None:
        """Raise TypeError/ValueError naming what was expected, before any kernel runs.

        Under torch.fx symbolic tracing x is a Proxy with no shape or dtype to check: the check is skipped there (the
        fused ops still validate their arguments when the traced graph runs)."""
        if isinstance(x, torch.fx.Proxy):
            return
        if not isinstance(x, Tensor):
            raise TypeError(f"expected an image tensor [B, {self.in_chans}, H, W], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point image tensor (float32/float16/bfloat16), got {x.dtype}; "
                "convert uint8 images with the model's transforms (fastmixer.predict does) or x.float() / 255"
            )
        if x.dim() != 4:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W] (rank 4), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        img_size = tuple(self.stem.img_size) if self.stem.img_size is not None else None
        if img_size is not None and self.stem.strict_img_size and tuple(x.shape[-2:]) != img_size:
            raise ValueError(
                f"expected images of size {img_size[0]}x{img_size[1]} (this model has {self.stem.num_patches} tokens), "
                f"got {x.shape[-2]}x{x.shape[-1]}; resize the input or build the model with img_size="
                f"{x.shape[-2] if x.shape[-2] == x.shape[-1] else tuple(x.shape[-2:])}"
            )
        w = self.stem.proj.weight
        if x.device != w.device:
            raise ValueError(f"input is on {x.device} but the model is on {w.device}; move one to the other")
        if x.dtype != w.dtype and not _autocast_enabled(x.device.type):
            raise TypeError(f"input is {x.dtype} but the model is {w.dtype}; use x.to({w.dtype}) or torch.autocast")

    def _tokens(self, x: Tensor) -> Tensor:
        """Stem + blocks: images -> block output tokens [B, S, C] (dense; before the final norm)."""
        self.check_input(x)
        # PatchEmbed returns a transposed view ([B, S, C] with C strided by S); the fused ops read dense [B, S, C], so
        # it is made contiguous once here rather than inside the first block.
        x = self.stem(x).contiguous()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, in_chans, H, W] -> final-normalised tokens [B, S, C]."""
        return self.norm(self._tokens(x))

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any):
        self.check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, in_chans, H, W] -> logits [B, num_classes] (pooled features if num_classes == 0).

        With global_pool='avg', the final LayerNorm and the token mean run as one fused op (norm_pool).
        """
        if self.global_pool != "avg" or not isinstance(self.norm, nn.LayerNorm):
            return super().forward(x)
        x = self._tokens(x)  # [B, S, C]
        x = norm_pool(x, self.norm.weight, self.norm.bias, eps=self.norm.eps)  # [B, C]
        x = self.head_drop(x)
        return self.head(x)

    def extract_feat(self, x: Tensor) -> Tensor:
        """Pooled pre-logit features [B, C] (the seed's name; = forward_head(forward_features(x), pre_logits=True))."""
        return self.forward_head(self.forward_features(x), pre_logits=True)
