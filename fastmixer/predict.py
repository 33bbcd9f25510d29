"""`fastmixer.predict`: classify an image with a Mixer using the model's own preprocessing, and `fastmixer predict`.

Preprocessing is timm's: `timm.data.resolve_data_config` on the model's pretrained_cfg (Google weights: bicubic resize
to 224 / 0.875, centre crop 224, mean = std = 0.5) and `timm.data.create_transform`, with the input size taken from the
model itself (a model built with img_size=384 gets 384 crops). Class names come from the lists timm ships
(ImageNet-1k, Google's 21k = 21843 classes, MIIL's 21k = 11221 classes); any other head gets "class_<i>".

`fastmixer predict` (the `run` below; its arguments are defined in fastmixer.cli) lives here too; what it shares
with `fastmixer eval` (model_from_args, format_score, ...) is in fastmixer.cli_common. Image files are read by
fastmixer.images.open_rgb, whose errors name the file and the reason.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from PIL import Image
from torch import Tensor

from fastmixer.cli_common import check_max_pixels, format_score, model_device, model_dtype, model_from_args
from fastmixer.images import open_rgb, pixel_limit

__all__ = ["class_labels", "data_config", "format_score", "load_image", "predict", "preprocess", "transforms"]

ImageLike = str | os.PathLike | Image.Image | Tensor


# ------------------------------------------------------------------------------------------------ preprocessing
def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's eval data config for `model` (input_size, interpolation, mean, std, crop_pct, crop_mode).

    Read from `model.pretrained_cfg` (timm defaults where it has none), with the input size replaced by the one the
    model was built for (`model.stem.img_size`), so the crops always fit a fixed-size Mixer.
    """
    from timm.data import resolve_data_config

    args: dict[str, Any] = {}
    stem = getattr(model, "stem", None)
    img_size = getattr(stem, "img_size", None)
    if img_size is not None:
        args["input_size"] = (int(getattr(model, "in_chans", 3)), int(img_size[0]), int(img_size[1]))
    return resolve_data_config(args, model=model)


def transforms(model: nn.Module) -> Callable[[Image.Image], Tensor]:
    """The eval transform of `model`: PIL image -> normalised float32 tensor [3, H, W] (timm's create_transform)."""
    from timm.data import create_transform

    return create_transform(**data_config(model), is_training=False)


def load_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    """A path or PIL image -> RGB PIL image (greyscale, palette and RGBA inputs are converted).

    A path that is missing, a directory, unreadable, not an image, truncated, damaged or over PIL's pixel limit raises
    fastmixer.images.ImageReadError (a ValueError; FileNotFoundError too when missing) naming the file and the reason.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"expected an image path or a PIL.Image, got {type(image).__name__}")
    return open_rgb(image)


def preprocess(image: ImageLike, transform: Callable[[Image.Image], Tensor]) -> Tensor:
    """One image -> float tensor [3, H, W] ready for the model.

    Paths, PIL images and uint8 tensors [3, H, W] (RGB, 0..255) go through `transform`; floating-point tensors
    [3, H, W] or [1, 3, H, W] are taken as already preprocessed and passed through unchanged.
    """
    if isinstance(image, Tensor):
        if image.dtype == torch.uint8:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a uint8 RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
            from torchvision.transforms.functional import to_pil_image

            # via PIL so a uint8 tensor is resized exactly like the same picture loaded from a file
            return transform(to_pil_image(image.cpu()))
        if not image.is_floating_point():
            raise TypeError(f"expected a uint8 or floating-point image tensor, got {image.dtype}")
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3:
            raise ValueError(
                f"expected one preprocessed image [3, H, W] or [1, 3, H, W], got shape {tuple(image.shape)}; "
                "pass a list of images to predict a batch"
            )
        return image
    return transform(load_image(image))


# ------------------------------------------------------------------------------------------------ labels
@functools.lru_cache(maxsize=4)
def _imagenet_labels(num_classes: int) -> tuple[str, ...] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    try:
        info = ImageNetInfo(subset)
    except (AssertionError, OSError):  # a subset this timm version ships no synset list for
        return None
    if info.num_classes() != num_classes:
        return None
    return tuple(info.label_descriptions())


@functools.lru_cache(maxsize=4)
def imagenet_synsets(num_classes: int) -> tuple[str, ...] | None:
    """The WordNet synset ids ("n01440764", ...) of an ImageNet head of `num_classes` classes, in class order (timm's
    lists: 1000, 21843, 11221 classes), or None for any other size."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    try:
        info = ImageNetInfo(subset)
    except (AssertionError, OSError):
        return None
    return tuple(info.label_names()) if info.num_classes() == num_classes else None


def class_labels(model_or_num_classes: nn.Module | int) -> list[str]:
    """Class index -> name: ImageNet lemmas ("tench, Tinca tinca") for 1000 / 21843 / 11221 classes (timm's lists),
    else "class_<i>"."""
    if isinstance(model_or_num_classes, nn.Module):
        num_classes = getattr(model_or_num_classes, "num_classes", None)
        if num_classes is None:
            raise TypeError(f"{type(model_or_num_classes).__name__} has no num_classes attribute")
    else:
        num_classes = model_or_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"expected a positive number of classes, got {num_classes!r}")
    names = _imagenet_labels(num_classes)
    return list(names) if names is not None else [f"class_{i}" for i in range(num_classes)]


# ------------------------------------------------------------------------------------------------ prediction
def predict(
    model: nn.Module,
    image: ImageLike | Sequence[ImageLike],
    topk: int = 5,
    device: str | torch.device | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify one image (or a list of images, run as one batch) with `model`.

    image: a path, a PIL image, a uint8 RGB tensor [3, H, W] (these three go through the model's transforms), or an
    already preprocessed float tensor [3, H, W] / [1, 3, H, W]. A list/tuple of these gives a list of results.
    device: where to run; the model is moved there (default: where the model already is).
    labels: class names overriding the ImageNet lists (e.g. for a fine-tuned head).

    Returns {"pred_class": int, "pred_score": float (softmax probability), "pred_label": str,
    "topk": [{"class", "score", "label"}, ...] best first, min(topk, num_classes) entries}.
    Runs in eval mode under torch.no_grad and restores the model's previous train/eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    num_classes = getattr(model, "num_classes", None)
    if not num_classes:
        raise ValueError("the model has no classifier head (num_classes == 0); use reset_classifier(n) first")
    if labels is None:
        names = class_labels(int(num_classes))
    else:
        names = [str(s) for s in labels]
        if len(names) != num_classes:
            raise ValueError(f"labels has {len(names)} names but the model has {num_classes} classes")

    batched = isinstance(image, (list, tuple))
    images = list(image) if batched else [image]
    if not images:
        raise ValueError("expected at least one image, got an empty list")

    if device is not None:
        model.to(device)
    dev, dtype = model_device(model), model_dtype(model)
    tf = transforms(model)
    x = torch.stack([preprocess(im, tf).to(dev) for im in images]).to(dtype)  # [N, 3, H, W]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)  # [N, num_classes]
    finally:
        model.train(was_training)
    probs = logits.float().softmax(dim=-1)
    scores, idx = probs.topk(min(topk, int(num_classes)), dim=-1)  # [N, k], best first

    results = []
    for s_row, i_row in zip(scores.tolist(), idx.tolist()):
        top = [{"class": int(i), "score": float(s), "label": names[i]} for s, i in zip(s_row, i_row)]
        results.append(
            {"pred_class": top[0]["class"], "pred_score": top[0]["score"], "pred_label": top[0]["label"], "topk": top}
        )
    return results if batched else results[0]


# ------------------------------------------------------------------------------------------------ CLI
def _format(image: str, result: dict[str, Any]) -> str:
    top = result["topk"]
    lines = [
        f"{image}: {result['pred_label']} (class {result['pred_class']}, p = {format_score(result['pred_score'])})"
    ]
    lines.append(f"  {'rank':>4}  {'class':>5}  {'score':<9}  label")
    for rank, t in enumerate(top, 1):
        lines.append(f"  {rank:>4}  {t['class']:>5}  {format_score(t['score']):<9}  {t['label']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`fastmixer predict`: print the top-k classes of each image (JSON lines, full precision, with --json)."""
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    check_max_pixels(args)
    with pixel_limit(args.max_image_pixels):
        for path in args.images:  # a bad file stops here, before the model is built (or downloaded)
            load_image(path)
        model, device = model_from_args(args)
        for path in args.images:
            result = predict(model, path, topk=args.topk, device=device)
            if args.json:
                print(json.dumps({"image": path, **result}))
            else:
                print(_format(path, result))
    return 0
