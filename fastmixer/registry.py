"""Variants, `create_model`, and registration of `fastmixer_*` architectures in timm's model registry.

Importing fastmixer registers fastmixer_{s32,s16,b32,b16,l32,l16}_224 and fastmixer_h14_224 in timm. Each fastmixer
architecture carries the pretrained cfgs of the timm Mixer it mirrors (same tags, same Hub ids, same preprocessing), so
`timm.create_model("fastmixer_b16_224.goog_in21k_ft_in1k", pretrained=True)` fetches the very weights timm's
`mixer_b16_224.goog_in21k_ft_in1k` uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import TYPE_CHECKING, Any

import timm
from timm.models import get_pretrained_cfg
from timm.models._builder import build_model_with_cfg, load_pretrained
from timm.models._pretrained import DefaultCfg, PretrainedCfg
from timm.models._registry import register_model, split_model_name_tag
from timm.models.mlp_mixer import checkpoint_filter_fn

if TYPE_CHECKING:  # imported where a model is built: timm imports this module right after itself (fastmixer/__init__)
    from fastmixer.model import MlpMixer

# fastmixer name -> (timm name it mirrors or None, architecture arguments). H/14 is the paper's Mixer-H/14
# (patch 14, 32 blocks, C = 1280, tokens MLP 640, channels MLP 5120); timm has no entry for it.
ARCHS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "fastmixer_s32_224": ("mixer_s32_224", dict(patch_size=32, num_blocks=8, embed_dim=512)),
    "fastmixer_s16_224": ("mixer_s16_224", dict(patch_size=16, num_blocks=8, embed_dim=512)),
    "fastmixer_b32_224": ("mixer_b32_224", dict(patch_size=32, num_blocks=12, embed_dim=768)),
    "fastmixer_b16_224": ("mixer_b16_224", dict(patch_size=16, num_blocks=12, embed_dim=768)),
    "fastmixer_l32_224": ("mixer_l32_224", dict(patch_size=32, num_blocks=24, embed_dim=1024)),
    "fastmixer_l16_224": ("mixer_l16_224", dict(patch_size=16, num_blocks=24, embed_dim=1024)),
    "fastmixer_h14_224": (None, dict(patch_size=14, num_blocks=32, embed_dim=1280)),
}
# Variant class-style names (the public `MixerB16` etc.) -> fastmixer architecture names.
VARIANTS = {
    "MixerS32": "fastmixer_s32_224",
    "MixerS16": "fastmixer_s16_224",
    "MixerB32": "fastmixer_b32_224",
    "MixerB16": "fastmixer_b16_224",
    "MixerL32": "fastmixer_l32_224",
    "MixerL16": "fastmixer_l16_224",
    "MixerH14": "fastmixer_h14_224",
}

_UNTRAINED = dict(
    num_classes=1000,
    input_size=(3, 224, 224),
    fixed_input_size=True,
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    first_conv="stem.proj",
    classifier="head",
    license="apache-2.0",
)


def _default_cfg(arch: str, timm_arch: str | None) -> DefaultCfg:
    """timm's DefaultCfg for `timm_arch`, re-labelled for `arch` (tags, urls and Hub ids unchanged)."""
    default = DefaultCfg()
    source = timm.models._registry._model_default_cfgs.get(timm_arch) if timm_arch else None
    if source is None:
        default.tags.append("untrained")
        default.cfgs["untrained"] = PretrainedCfg(architecture=arch, tag="untrained", **_UNTRAINED)
        return default
    for tag in source.tags:
        cfg = get_pretrained_cfg(f"{timm_arch}.{tag}")
        default.tags.append(tag)
        default.cfgs[tag] = dataclasses.replace(cfg, architecture=arch)
    default.is_pretrained = source.is_pretrained
    return default


def _builder(arch: str, arch_args: dict[str, Any]):
    def build(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
        from fastmixer.model import MlpMixer

        out_indices = kwargs.pop("out_indices", 3)
        cache_dir = kwargs.pop("cache_dir", None)
        features = kwargs.get("features_only", False)
        model = build_model_with_cfg(
            MlpMixer,
            arch,
            pretrained and features,  # feature wrappers load inside timm; plain models load below
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **{**arch_args, **kwargs},
        )
        if pretrained and not features:
            _load_pretrained(model, kwargs.get("in_chans", 3), cache_dir)
        return model

    build.__name__ = arch
    build.__qualname__ = arch
    build.__doc__ = f"{arch}: fastmixer MlpMixer with {arch_args}."
    return build


# timm's register_model reads the pretrained cfgs from the entry point's module attribute `default_cfgs`.
default_cfgs = {arch: _default_cfg(arch, timm_arch) for arch, (timm_arch, _) in ARCHS.items()}


def _load_pretrained(model: MlpMixer, in_chans: int, cache_dir: str | None) -> None:
    """timm's pretrained loading (Hub or URL), with an error that says what to do offline."""
    cfg = model.pretrained_cfg
    name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or cfg.get("state_dict")):
        raise ValueError(
            f"{name} has no pretrained weights to fetch (timm publishes Mixer B/16 and L/16 only); "
            "pass checkpoint_path=... or pretrained=False"
        )
    from fastmixer.hub import PretrainedFetchError, cache_only, hub_unreachable

    # offline, huggingface_hub retries for ~25 s per file: check the Hub within seconds, then read the cache only
    offline = hub_unreachable() if cfg.get("hf_hub_id") and not cfg.get("file") else None
    try:
        extra = {"cache_dir": cache_dir} if cache_dir is not None else {}  # older timm has no cache_dir
        with cache_only() if offline else contextlib.nullcontext():
            load_pretrained(
                model,
                pretrained_cfg=cfg,
                num_classes=model.num_classes,
                in_chans=in_chans,
                filter_fn=checkpoint_filter_fn,
                **extra,
            )
    except Exception as e:
        source = f"Hub id {cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else f"URL {cfg.get('url') or cfg.get('file')}"
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        reason = f"{offline}, and the file is not in the local cache" if offline else error
        raise PretrainedFetchError(name, source, reason, hub_id=cfg.get("hf_hub_id")) from e


def _register_all() -> None:
    for arch, (_, arch_args) in ARCHS.items():
        if arch in timm.list_models(arch):
            continue  # already registered (module re-imported)
        fn = _builder(arch, arch_args)
        fn.__module__ = __name__
        register_model(fn)


_register_all()


def accepted_names() -> list[str]:
    """Every architecture spelling resolve_name accepts (each optionally followed by a .tag; the seed's names never)."""
    from fastmixer.mmpretrain_api import SEED_MODELS

    return [*ARCHS, *(a[len("fast") :] for a in ARCHS), *VARIANTS, *SEED_MODELS]


def _did_you_mean(word: str, choices: list[str]) -> str:
    # closest spellings, compared case-insensitively: " did you mean 'a' or 'b'?" or ""
    lowered = {c.lower(): c for c in choices}
    close = [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.6)]
    return f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def resolve_name(name: str) -> str:
    """'mixer_b16_224.goog_in21k' / 'fastmixer_b16_224' / 'MixerB16' -> fastmixer architecture[.tag].

    Unknown names and tags raise a ValueError that suggests the closest accepted spellings and lists them all."""
    from fastmixer.mmpretrain_api import SEED_MODELS

    if str(name) in SEED_MODELS:  # the seed's (mmpretrain's) names, which carry no tag
        return str(name)
    arch, tag = split_model_name_tag(str(name))
    arch = VARIANTS.get(arch, arch)
    if arch.startswith("mixer_"):
        arch = "fast" + arch
    if arch not in ARCHS:
        known = accepted_names()
        raise ValueError(
            f"unknown Mixer model {name!r};{_did_you_mean(split_model_name_tag(str(name))[0], known)} "
            f"Accepted names (each optionally with a .tag): {', '.join(known)}"
        )
    if tag and tag not in timm.models._registry._model_default_cfgs[arch].cfgs:
        tags = list(timm.models._registry._model_default_cfgs[arch].cfgs)
        raise ValueError(f"unknown pretrained tag {tag!r} for {arch};{_did_you_mean(tag, tags)} available: {tags}")
    return f"{arch}.{tag}" if tag else arch


def resolve_variant(name: str) -> str:
    """A short variant name as `fastmixer bench --models` takes it ('b16', 'l16', 'h14') or any resolve_name spelling
    -> fastmixer architecture[.tag]."""
    return resolve_name(name if str(name).startswith(("mixer", "fastmixer", "Mixer")) else f"mixer_{name}_224")


def create_model(
    name: str, pretrained: bool = False, checkpoint_path: str | None = None, strict: bool = True, **kwargs: Any
) -> MlpMixer:
    """Build a fastmixer Mixer from a timm name (`mixer_b16_224[.tag]`) or a fastmixer one (`fastmixer_b16_224`,
    `MixerB16`); `pretrained=True` fetches timm's weights through its Hub machinery, `checkpoint_path` loads a local
    timm / mmpretrain / JAX checkpoint (format detected, strict by default). The seed's (mmpretrain's) names
    (`mlp-mixer-base-p16_3rdparty_64xb64_in1k`, `mlp-mixer-large-p16_3rdparty_64xb64_in1k`) build its architecture
    (LayerNorm eps 1e-5), and `pretrained=True` downloads its published weights (fastmixer.mmpretrain_api)."""
    from fastmixer.mmpretrain_api import SEED_MODELS, build_seed_model

    if str(name) in SEED_MODELS:
        return build_seed_model(str(name), bool(pretrained), checkpoint_path=checkpoint_path, strict=strict, **kwargs)
    model = timm.create_model(resolve_name(name), pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        from fastmixer.weights import load_checkpoint

        load_checkpoint(model, checkpoint_path, strict=strict)
    return model


def _variant(class_name: str):
    arch = VARIANTS[class_name]

    def variant(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
        return create_model(arch, pretrained=pretrained, **kwargs)

    variant.__name__ = variant.__qualname__ = class_name
    variant.__doc__ = f"{class_name}: fastmixer `{arch}` (timm-compatible `MlpMixer`). kwargs go to MlpMixer."
    return variant


MixerS32 = _variant("MixerS32")
MixerS16 = _variant("MixerS16")
MixerB32 = _variant("MixerB32")
MixerB16 = _variant("MixerB16")
MixerL32 = _variant("MixerL32")
MixerL16 = _variant("MixerL16")
MixerH14 = _variant("MixerH14")
