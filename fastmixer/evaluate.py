"""`fastmixer.evaluate`: top-1 / top-5 accuracy on an image folder, and `fastmixer eval` (arguments in fastmixer.cli).

The folder uses torchvision's ImageFolder layout, DIR/<class>/<image>. Which class index a folder stands for:
  * ImageNet synset folders (n01440764, ...), all of them synsets of the model's head (1000 classes: ImageNet-1k;
    21843 / 11221: the 21k lists timm ships): each folder is scored as its synset's own index, so ImageNet's val set,
    or any subset of its classes, is scored as timm's validate.py does;
  * otherwise folder i in sorted order is class i. A folder count that differs from the head's class count is
    warned about (more folders than classes is an error).
Images that cannot be read (truncated, corrupt, too large, unreadable) are skipped with one warning each naming the
file and the reason, and counted; `strict=True` raises at the first instead. Preprocessing is the model's own
(fastmixer.predict.transforms: timm's eval transform).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fastmixer.cli_common import check_max_pixels, format_score, model_device, model_dtype, model_from_args
from fastmixer.images import ImageReadError, open_rgb
from fastmixer.predict import imagenet_synsets, transforms

__all__ = ["evaluate"]

_SYNSET = re.compile(r"n\d{8}")


class _Images(torch.utils.data.Dataset):
    """(path, class index) pairs -> (image [3, H, W] float32 or None, class index, reason it could not be read)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, max_pixels: int | None) -> None:
        self.samples, self.transform, self.max_pixels = samples, transform, max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        path, target = self.samples[i]
        try:
            return self.transform(open_rgb(path, self.max_pixels)), target, ""
        except ImageReadError as e:
            return None, target, e.reason


class _Collate:
    """Stack the readable images of a batch; pass the unreadable ones' (dataset index, reason) along. (A class, not a
    closure: DataLoader workers pickle it.)"""

    def __call__(self, batch: list[tuple[int, tuple[torch.Tensor | None, int, str]]]) -> Any:
        good = [(x, t) for _, (x, t, _) in batch if x is not None]
        bad = [(i, reason) for i, (x, _, reason) in batch if x is None]
        images = torch.stack([x for x, _ in good]) if good else None  # [B', 3, H, W]
        target = torch.tensor([t for _, t in good], dtype=torch.long)  # [B']
        return images, target, bad


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds: _Images) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, tuple[torch.Tensor | None, int, str]]:
        return i, self.ds[i]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def class_mapping(folders: list[str], num_classes: int) -> tuple[list[int], str, str | None]:
    """Folder names (sorted) -> (class index per folder, how: "imagenet-synsets" | "sorted-folders", warning or None).

    Raises ValueError when there are more folders than classes and the folders are not synsets of the head."""
    synsets = imagenet_synsets(num_classes)
    if synsets is not None and all(_SYNSET.fullmatch(f) for f in folders):
        index = {s: i for i, s in enumerate(synsets)}
        unknown = [f for f in folders if f not in index]
        if not unknown:
            return [index[f] for f in folders], "imagenet-synsets", None
    if len(folders) > num_classes:
        raise ValueError(
            f"{len(folders)} class folders but the model has {num_classes} classes; folder i (sorted by name) is "
            "scored as class i"
        )
    warning = None
    if len(folders) != num_classes:
        warning = (
            f"{len(folders)} class folders but the model's head has {num_classes} classes: folder i (sorted by name) "
            f"is scored as class i, which is right only if the folders are the head's classes 0..{len(folders) - 1}"
        )
        if synsets:
            warning += " (folders named by ImageNet synsets of the head, n01440764 ..., are mapped to their own index)"
    return list(range(len(folders))), "sorted-folders", warning


def evaluate(
    model: nn.Module,
    data_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    strict: bool = False,
    max_pixels: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy of `model` on the ImageFolder `data_dir` (see the module docstring for the folder -> class mapping).

    device: where to run; the model is moved there (default: where the model already is).
    strict: raise fastmixer.images.ImageReadError at the first unreadable image instead of skipping it.
    max_pixels: PIL's decompression-bomb limit for each image (None: PIL's; 0: none).
    warn: called with each warning line (a skipped image, a class-count mismatch); default warnings.warn.
    Returns {"top1", "top5": percent of the images scored, "correct1", "correct5", "n": images scored,
    "num_folders", "class_mapping", "skipped": images skipped, "skipped_files": [{"path", "reason"}]}. With fewer
    than 5 classes, top5 counts the top-num_classes predictions (100 %). Runs in eval mode under torch.no_grad and
    restores the model's previous mode.
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
    warn = warn or _warn

    # the file list only (no decoding): FileNotFoundError when no class folder holds an image file
    folder = ImageFolder(str(root), loader=lambda path: path)
    try:
        index, how, mismatch = class_mapping(folder.classes, num_classes)
    except ValueError as e:
        raise ValueError(f"{str(root)!r} has {e}") from None
    if mismatch:
        warn(f"{str(root)!r} has {mismatch}")
    samples = [(path, index[folder_idx]) for path, folder_idx in folder.samples]

    if device is not None:
        model.to(device)
    dev, dtype = model_device(model), model_dtype(model)
    dataset = _Indexed(_Images(samples, transforms(model), max_pixels))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_Collate(),
        pin_memory=dev.type == "cuda",
    )
    k = min(5, num_classes)
    correct1 = correct5 = n = 0
    skipped: list[dict[str, str]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False) as bar:
            for images, target, bad in bar:
                for i, reason in bad:  # in file order: with strict, the first unreadable file stops the run
                    path = samples[i][0]
                    if strict:
                        raise ImageReadError(path, reason)
                    skipped.append({"path": path, "reason": reason})
                    warn(f"skipped {path!r}: {reason}")
                if images is None:
                    continue
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
    if n == 0:
        raise ValueError(f"no readable image in {str(root)!r} ({len(skipped)} skipped)")
    return {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "correct1": correct1,
        "correct5": correct5,
        "n": n,
        "num_folders": len(folder.classes),
        "class_mapping": how,
        "skipped": len(skipped),
        "skipped_files": skipped,
    }


def run(args: argparse.Namespace) -> int:
    """`fastmixer eval`: print top-1 / top-5 on --data (one JSON object, full precision, with --json)."""
    from tqdm import tqdm

    if not Path(args.data).is_dir():  # before building (and maybe downloading) the model
        raise FileNotFoundError(f"data directory not found: {args.data!r} (expected DIR/<class>/<image> folders)")
    check_max_pixels(args)
    model, device = model_from_args(args)
    show = not args.no_progress

    def warn(line: str) -> None:
        tqdm.write(f"warning: {line}", file=sys.stderr)  # above the progress bar, not through it

    res = evaluate(
        model,
        args.data,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=device,
        progress=show,
        strict=args.strict,
        max_pixels=args.max_image_pixels,
        warn=warn,
    )
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **res}))
    else:
        skipped = f", {res['skipped']} unreadable skipped" if res["skipped"] else ""
        print(
            f"{args.model} on {args.data}: top-1 {format_score(res['top1'])}%  top-5 {format_score(res['top5'])}%  "
            f"({res['n']} images, {res['num_folders']} classes{skipped})"
        )
    return 0
