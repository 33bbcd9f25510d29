"""`fastmixer.info`: size and cost of a Mixer (parameters, GFLOPs, input size, shapes), and `fastmixer info MODEL`
(its arguments are defined in fastmixer.cli).

FLOPs are counted analytically from the module shapes, per image, 2 per multiply-add, over the matmuls and the stem
convolution only (what torch.utils.flop_counter counts; LayerNorm, GELU, bias and residual adds are elementwise and
add well under 1 %). With S tokens, C channels, token-MLP width Dt, channel-MLP width Dc, K classes, patch p:

    stem      2 * S * C * (3 * p * p)
    per block 2 * 2 * S * Dt * C   (token MLP: fc1 + fc2, each contracting over S or Dt, for each of C channels)
            + 2 * 2 * S * C * Dc   (channel MLP: fc1 + fc2, for each of S tokens)
    head      2 * C * K            (after the token mean)

The model tables of mmpretrain (the seed) give "FLOPs" that are multiply-adds counted by mmcv's complexity counter,
which also counts the stem conv's bias (1 per output), every affine LayerNorm (2 per element) and the token-mean
pooling (1 per element); `mmcv_macs` reproduces that count (Mixer-B/16: 12.61 G, L/16: 44.57 G, as in the seed's table)
and `fastmixer info` prints it beside the matmul count.

Named models are built on the meta device: no weights are allocated, so `fastmixer info MixerH14` is instant.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn as nn

__all__ = ["info", "mixer_flops"]


def _linear_flops(module: nn.Module, rows: int) -> int:
    # every nn.Linear inside `module`, applied to `rows` vectors: 2 * rows * in * out
    return sum(2 * rows * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def mixer_flops(model: nn.Module) -> dict[str, int]:
    """Per-image forward FLOPs of a (timm or fastmixer) MlpMixer, split into stem / token_mix / channel_mix / head."""
    stem = getattr(model, "stem", None)
    proj = getattr(stem, "proj", None)
    if not isinstance(proj, nn.Conv2d) or not hasattr(model, "blocks"):
        raise TypeError(f"expected an MlpMixer (stem.proj conv + blocks), got {type(model).__name__}")
    S = int(stem.num_patches)
    C = int(proj.out_channels)
    kh, kw = proj.kernel_size
    out = {"stem": 2 * S * C * (proj.in_channels // proj.groups) * kh * kw, "token_mix": 0, "channel_mix": 0}
    for blk in model.blocks:
        out["token_mix"] += _linear_flops(blk.mlp_tokens, rows=C)  # [C, S] @ [S, Dt] then [C, Dt] @ [Dt, S]
        out["channel_mix"] += _linear_flops(blk.mlp_channels, rows=S)  # [S, C] @ [C, Dc] then [S, Dc] @ [Dc, C]
    head = getattr(model, "head", None)
    out["head"] = _linear_flops(head, rows=1) if isinstance(head, nn.Module) else 0
    out["total"] = sum(out.values())
    return out


def mmcv_macs(model: nn.Module) -> int:
    """Per-image multiply-adds of a Mixer as mmcv's get_model_complexity_info counts them (mmpretrain's "FLOPs"):
    matmuls and stem conv (mixer_flops / 2) + stem conv bias (S * C) + 2 * S * C per affine LayerNorm (1 * S * C
    without affine) + S * C for the token mean (global_pool='avg'). GELU, dropout and residual adds count 0."""
    base = mixer_flops(model)["total"] // 2
    S, C = int(model.stem.num_patches), int(model.stem.proj.out_channels)
    extra = S * C if model.stem.proj.bias is not None else 0
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            extra += S * C * (2 if m.elementwise_affine else 1)
    if getattr(model, "global_pool", "avg") == "avg":
        extra += S * C
    return base + extra


def _build(name: str, **kwargs: Any) -> nn.Module:
    from fastmixer.registry import create_model

    with torch.device("meta"):  # shapes only, no memory and no init cost
        return create_model(name, **kwargs)


def info(model: str | nn.Module, img_size: int | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Describe a Mixer given by name ('mixer_b16_224[.tag]', 'fastmixer_b16_224', 'MixerB16') or as a module.

    Returns {"name", "params", "gflops", "gmacs", "gmacs_mmcv" (mmcv's count, see mmcv_macs),
    "flops": {stem, token_mix, channel_mix, head, total},
    "input_size": (3, H, W), "patch_size", "tokens", "embed_dim", "tokens_mlp_dim", "channels_mlp_dim",
    "num_blocks", "num_classes", "data_config": timm's eval preprocessing, "pretrained_tags"}.
    img_size / num_classes override the architecture's (names only).
    """
    from fastmixer.predict import data_config

    if isinstance(model, str):
        kwargs: dict[str, Any] = {}
        if img_size is not None:
            kwargs["img_size"] = int(img_size)
        if num_classes is not None:
            kwargs["num_classes"] = int(num_classes)
        module = _build(model, **kwargs)
    elif isinstance(model, nn.Module):
        if img_size is not None or num_classes is not None:
            raise ValueError("img_size / num_classes apply to a model name, not to a built model")
        module = model
    else:
        raise TypeError(f"expected a model name or an nn.Module, got {type(model).__name__}")

    flops = mixer_flops(module)
    blk = module.blocks[0]
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    arch = cfg.get("architecture") or type(module).__name__
    tags: list[str] = []
    if cfg.get("architecture"):
        import timm

        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
    dc = data_config(module)
    return {
        "name": f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch,
        "params": sum(p.numel() for p in module.parameters()),
        "gflops": flops["total"] / 1e9,
        "gmacs": flops["total"] / 2e9,
        "gmacs_mmcv": mmcv_macs(module) / 1e9,
        "flops": flops,
        "input_size": tuple(dc["input_size"]),
        "patch_size": int(module.stem.proj.kernel_size[0]),
        "tokens": int(module.stem.num_patches),
        "embed_dim": int(module.stem.proj.out_channels),
        "tokens_mlp_dim": int(blk.mlp_tokens.fc1.out_features),
        "channels_mlp_dim": int(blk.mlp_channels.fc1.out_features),
        "num_blocks": len(module.blocks),
        "num_classes": int(getattr(module, "num_classes", 0)),
        "data_config": dc,
        "pretrained_tags": tags,
    }


def _table(d: dict[str, Any]) -> str:
    f = d["flops"]
    dc = d["data_config"]
    rows = [
        ("parameters", f"{d['params'] / 1e6:.2f} M ({d['params']:,})"),
        ("GFLOPs / image", f"{d['gflops']:.2f} ({d['gmacs']:.2f} GMACs; matmuls + stem conv)"),
        (
            "MACs / image, mmcv",
            f"{d['gmacs_mmcv']:.2f} G multiply-adds (mmcv's counter, mmpretrain's tables: + LayerNorm, bias, pooling)",
        ),
        ("  stem", f"{f['stem'] / 1e9:.3f}"),
        ("  token mixing", f"{f['token_mix'] / 1e9:.3f}"),
        ("  channel mixing", f"{f['channel_mix'] / 1e9:.3f}"),
        ("  head", f"{f['head'] / 1e9:.4f}"),
        ("input size", "x".join(str(v) for v in d["input_size"])),
        (
            "preprocessing",
            f"{dc['interpolation']}, crop_pct {dc['crop_pct']}, mean {tuple(dc['mean'])}, std {tuple(dc['std'])}",
        ),
        ("patch size", str(d["patch_size"])),
        ("tokens x channels", f"{d['tokens']} x {d['embed_dim']}"),
        ("blocks", str(d["num_blocks"])),
        ("token / channel MLP", f"{d['tokens_mlp_dim']} / {d['channels_mlp_dim']}"),
        ("classes", str(d["num_classes"])),
        ("pretrained tags", ", ".join(d["pretrained_tags"]) or "-"),
    ]
    from fastmixer.mmpretrain_api import SEED_MODELS

    seed = SEED_MODELS.get(d["name"])
    if seed is not None:  # the seed's own table, beside what was counted above
        rows.append(
            (
                "mmpretrain table",
                f"{seed.params_m:.2f} M params, {seed.flops_g:.2f} G FLOPs (multiply-adds), ImageNet-1k top-1 "
                f"{seed.top1:.2f} % / top-5 {seed.top5:.2f} %",
            )
        )
        pp = seed.preprocess
        rows.append(
            (
                "mmpretrain pipeline",
                f"short edge {pp['resize_short']} ({pp['interpolation']}), centre crop {pp['crop']}, "
                f"mean {pp['mean']}, "
                f"std {pp['std']} on 0-255 RGB (fastmixer.inference_model)",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join([d["name"], *(f"  {k:<{width}}  {v}" for k, v in rows)])


def run(args: argparse.Namespace) -> int:
    """`fastmixer info MODEL`: print the table (or JSON)."""
    d = info(args.model, img_size=args.img_size, num_classes=args.num_classes)
    print(json.dumps(d) if args.json else _table(d))
    return 0
