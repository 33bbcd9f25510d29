"""`fastmixer.evaluate`: top-1 / top-5 accuracy on an image folder, and the `fastmixer eval` subcommand.

The folder uses torchvision's ImageFolder layout, DIR/<class>/<image>. Class folders are sorted by name and folder i
is taken as class i of the model's head. ImageNet's validation set laid out with synset folder names (n01440764, ...)
sorts into exactly the ImageNet-1k class order, so `fastmixer eval --data imagenet/val` scores a 1k model as timm's
validate.py does. Preprocessing is the model's own (fastmixer.predict.transforms: timm's eval transform).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fastmixer.predict import _model_device, _model_dtype, add_model_args, model_from_args, transforms

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    data_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of `model` on the ImageFolder `data_dir` (folder i in sorted order = class i).

    device: where to run; the model is moved there (default: where the model already is).
    Returns {"top1", "top5": percent, "correct1", "correct5", "n": number of images, "num_folders"}. With fewer than
    5 classes, top5 counts the top-num_classes predictions (100 %). Runs in eval mode under torch.no_grad and restores
    the model's previous mode.
    """
    from torchvision.datasets import ImageFolder
    from tqdm import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch_size" else 0):
            raise ValueError(f"{name} must be an int >= {1 if name == 'batch_size' else 0}, got {v!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {str(root)!r} (expected DIR/<class>/<image> folders)")
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise ValueError("the model has no classifier head (num_classes == 0)")

    dataset = ImageFolder(str(root), transform=transforms(model))  # FileNotFoundError when no class folder has images
    if len(dataset.classes) > num_classes:
        raise ValueError(
            f"{str(root)!r} has {len(dataset.classes)} class folders but the model has {num_classes} classes; "
            "folder i (sorted by name) is scored as class i"
        )

    if device is not None:
        model.to(device)
    dev, dtype = _model_device(model), _model_dtype(model)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=dev.type == "cuda"
    )
    k = min(5, num_classes)
    correct1 = correct5 = n = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False) as bar:
            for images, target in bar:
                images = images.to(dev, dtype=dtype, non_blocking=True)  # [B, 3, H, W]
                target = target.to(dev)  # [B] int64
                top = model(images).topk(k, dim=-1).indices  # [B, k], best first
                hits = top == target[:, None]  # [B, k]
                correct1 += int(hits[:, 0].sum())
                correct5 += int(hits.any(dim=1).sum())
                n += target.numel()
                bar.set_postfix(top1=f"{100.0 * correct1 / n:.2f}", top5=f"{100.0 * correct5 / n:.2f}")
    finally:
        model.train(was_training)
    return {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "correct1": correct1,
        "correct5": correct5,
        "n": n,
        "num_folders": len(dataset.classes),
    }


def run(args: argparse.Namespace) -> int:
    """`fastmixer eval`: print top-1 / top-5 on --data (one JSON object with --json)."""
    if not Path(args.data).is_dir():  # before building (and maybe downloading) the model
        raise FileNotFoundError(f"data directory not found: {args.data!r} (expected DIR/<class>/<image> folders)")
    model, device = model_from_args(args)
    show = not args.no_progress
    res = evaluate(model, args.data, batch_size=args.batch_size, num_workers=args.workers, device=device, progress=show)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **res}))
    else:
        print(
            f"{args.model} on {args.data}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
            f"({res['n']} images, {res['num_folders']} classes)"
        )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="top-1/top-5 accuracy on an ImageFolder directory",
        description="Top-1/top-5 accuracy on DIR/<class>/<image>; class folders sorted by name map to class 0, 1, ...",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root (e.g. ImageNet val by synset)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_model_args(p)
    p.set_defaults(func=run)
    return p
