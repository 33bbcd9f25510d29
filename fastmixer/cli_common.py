"""What `fastmixer predict` and `fastmixer eval` share: the model their options describe (model_from_args), its device
and dtype, the score format and option checks. (Options: fastmixer.cli; preprocessing and labels: fastmixer.predict.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["check_max_pixels", "format_score", "model_device", "model_dtype", "model_from_args"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first parameter (float32 for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.float32


def format_score(p: float) -> str:
    """A probability to 4 significant digits (0.4123, 0.001, 2.5e-05): what the CLI prints; --json keeps all."""
    return format(p, ".4g")


def model_from_args(args: argparse.Namespace) -> tuple[nn.Module, torch.device]:
    """Build the model described by the CLI's model options (fastmixer.cli), on the chosen device, in eval mode.

    Checks come before any work: the model name (with "did you mean"), the options, the checkpoint path; then the
    random-weights warning; a failed pretrained fetch says to pass --checkpoint FILE.
    """
    from fastmixer.hub import PretrainedFetchError
    from fastmixer.registry import create_model, resolve_name

    resolve_name(args.model)  # an unknown name fails here, before any warning about weights
    if args.checkpoint and args.pretrained:
        raise ValueError("pass either --checkpoint or --pretrained, not both")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {args.checkpoint!r}")
    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {args.num_classes}")
        kwargs["num_classes"] = args.num_classes
    if args.img_size is not None:
        if args.img_size < 1:
            raise ValueError(f"--img-size must be >= 1, got {args.img_size}")
        kwargs["img_size"] = args.img_size
    if args.checkpoint and (args.num_classes is None or args.img_size is None):
        from fastmixer.weights import infer_config, read_checkpoint

        # head size and resolution of a fine-tuned checkpoint (10 classes, 384 px, ...) from its weights' shapes;
        # when they cannot be inferred the load below reports what does not fit
        try:
            cfg = infer_config(read_checkpoint(args.checkpoint))
        except ValueError:
            cfg = {}
        if args.num_classes is None and cfg.get("num_classes"):
            kwargs["num_classes"] = cfg["num_classes"]
        if args.img_size is None and cfg.get("img_size"):
            kwargs["img_size"] = cfg["img_size"]
    if not args.checkpoint and not args.pretrained:
        print(
            "warning: no --checkpoint or --pretrained given: the weights are random, so are the predictions",
            file=sys.stderr,
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = create_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint, **kwargs)
    except PretrainedFetchError as e:
        raise RuntimeError(e.cli_message()) from e
    return model.to(device).eval(), device


def check_max_pixels(args: argparse.Namespace) -> None:
    """--max-image-pixels must be >= 0."""
    if args.max_image_pixels is not None and args.max_image_pixels < 0:
        raise ValueError(f"--max-image-pixels must be >= 0 (0: no limit), got {args.max_image_pixels}")
