"""The seed's (mmpretrain's) model API on fastmixer models: `get_model`, `inference_model`, `list_models`.

    from fastmixer import get_model, inference_model   # was: from mmpretrain import get_model, inference_model
    model = get_model("mlp-mixer-base-p16_3rdparty_64xb64_in1k", pretrained=True)
    result = inference_model(model, "bird.jpg")     # {"pred_scores", "pred_label", "pred_score", "pred_class"}

One namespace: the seed's two model names (its configs/mlp_mixer model table), timm's Mixer names (`mixer_b16_224`,
with pretrained tags) and fastmixer's (`fastmixer_b16_224`, `MixerB16`). A seed name builds mmpretrain's architecture
as a fastmixer MlpMixer: Mixer-B/16 or L/16 at 224 px, 1000 classes, LayerNorm eps 1e-5 (mmcv's default), MLP dropout
0.1 as in the seed's config (`proj_drop_rate=0.0` gives the fused path when training too), exact GELU. Its weights
are the published checkpoint of the seed's model table, downloaded into torch.hub's cache (`torch.hub.get_dir()`/
checkpoints, the file name's hash prefix checked, as torch.hub does) and converted by fastmixer.weights' mmpretrain
layout. `inference_model` preprocesses like the seed's test pipeline: short edge to 256 (bicubic, OpenCV's kernel:
a = -0.75, no antialiasing, rounded to uint8), centre crop 224, (x - 127.5) / 127.5 on RGB 0-255.

What differs from mmpretrain: the model is an nn.Module with timm's interface (`model(x)` gives logits as mmpretrain's
`mode='tensor'` does; `extract_feat(x)` gives the pooled features as one [B, C] tensor, not a 1-tuple); `get_model`
takes MlpMixer keyword arguments, not config overrides; image files are decoded by PIL, not OpenCV.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SEED_MODELS",
    "WeightsDownloadError",
    "download_checkpoint",
    "get_model",
    "inference_model",
    "list_models",
    "mmpretrain_preprocess",
]

CONNECT_TIMEOUT_S = 5.0  # DNS + TCP connect before a download starts
READ_TIMEOUT_S = 60.0  # per socket read once connected


@dataclass(frozen=True)
class SeedModel:
    """One row of the seed's model table (mmpretrain configs/mlp_mixer/metafile.yml)."""

    arch: dict[str, Any]  # MlpMixer arguments
    timm_name: str  # the timm architecture of the same shape
    url: str  # published checkpoint (mmpretrain layout)
    params_m: float  # the table's "Params (M)"
    flops_g: float  # the table's "Flops (G)": multiply-adds, mmcv's counter
    top1: float
    top5: float
    preprocess: dict[str, Any] = field(
        default_factory=lambda: dict(resize_short=256, interpolation="bicubic", crop=224, mean=127.5, std=127.5)
    )


_OPENMMLAB = "https://download.openmmlab.com/mmclassification/v0/mlp-mixer/"


def _seed(size: str, num_blocks: int, embed_dim: int, timm_name: str, file_hash: str, *table: float) -> SeedModel:
    # One metafile row: mlp-mixer-<size>-p16, its published file (named by size and hash), then the table's params (M),
    # FLOPs (G), top-1 and top-5.
    arch = dict(patch_size=16, num_blocks=num_blocks, embed_dim=embed_dim)
    url = f"{_OPENMMLAB}mixer-{size}-p16_3rdparty_64xb64_in1k_20211124-{file_hash}.pth"
    return SeedModel(arch, timm_name, url, *table)


SEED_MODELS: dict[str, SeedModel] = {
    "mlp-mixer-base-p16_3rdparty_64xb64_in1k": _seed(
        "base", 12, 768, "mixer_b16_224", "1377e3e0", 59.88, 12.61, 76.68, 92.25
    ),
    "mlp-mixer-large-p16_3rdparty_64xb64_in1k": _seed(
        "large", 24, 1024, "mixer_l16_224", "5a2519d2", 208.20, 44.57, 72.34, 88.02
    ),
}
_COMMON = dict(num_classes=1000, img_size=224, mlp_ratio=(0.5, 4.0), norm_eps=1e-5, proj_drop_rate=0.1)


# ------------------------------------------------------------------------------------------------------ download
class WeightsDownloadError(RuntimeError):
    """A published checkpoint could not be fetched; the message names the URL and the ways to pass the file instead
    (Python, the command line, the cache path)."""

    def __init__(self, name: str, url: str, reason: str, cache_file: Path) -> None:
        self.name, self.url, self.reason, self.cache_file = name, url, reason, cache_file
        super().__init__(
            f"could not download the weights of {name} from {url}: {reason}. Download that file on a machine with "
            f"network access, then pass it: fastmixer.get_model({name!r}, pretrained='{cache_file.name}') in Python, "
            f"--checkpoint FILE on the command line, or put it at {str(cache_file)!r}, where pretrained=True looks "
            "first."
        )


def _first_hop(url: str) -> tuple[str, int] | None:
    """(host, port) a request to `url` connects to first: the proxy for its scheme if one is set, else the server."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 8080
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _unreachable(url: str, timeout_s: float) -> str | None:
    """Why `url`'s first hop cannot be reached within timeout_s (DNS included, which has no timeout of its own: the
    attempt runs in a daemon thread), or None."""
    hop = _first_hop(url)
    if hop is None:
        return None
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection(hop, timeout=timeout_s):
                result.append(None)
        except OSError as e:
            result.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=attempt, daemon=True, name="fastmixer-download-check")
    t.start()
    t.join(timeout_s)
    if not result:
        return f"no connection to {hop[0]}:{hop[1]} within {timeout_s:g} s"
    return None if result[0] is None else f"cannot connect to {hop[0]}:{hop[1]} ({result[0]})"


def _hash_prefix(filename: str) -> str | None:
    # torch.hub's convention: name-<first hex digits of the file's sha256>.ext
    m = re.search(r"-([a-f0-9]{6,})\.", filename)
    return m.group(1) if m else None


def download_checkpoint(url: str, name: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> Path:
    """The local path of `url` in torch.hub's checkpoint cache, downloading it first when it is not there.

    The download goes to a temporary file beside the target; its sha256 must start with the hash prefix in the file
    name (torch.hub's rule) before it is renamed into place, so a failed or corrupt download never lands in the cache.
    A file already in the cache is used as it is (as torch.hub does). Raises WeightsDownloadError within about
    timeout_s when the server cannot be reached.
    """
    filename = os.path.basename(urllib.parse.urlsplit(url).path)
    if not filename:
        raise ValueError(f"cannot tell a file name from the URL {url!r}")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / filename
    if target.is_file():
        return target
    label = name or filename
    reason = _unreachable(url, timeout_s)
    if reason is not None:
        raise WeightsDownloadError(label, url, reason, target)
    cache.mkdir(parents=True, exist_ok=True)
    expected = _hash_prefix(filename)
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".partial", dir=cache)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if expected is not None and not got.startswith(expected):
            raise WeightsDownloadError(
                label,
                url,
                f"the download's sha256 {got[:16]}... does not start with {expected} (its name's hash)",
                target,
            )
        os.replace(tmp, target)
    except WeightsDownloadError:
        raise
    except Exception as e:  # URLError, timeouts, HTTP errors, a full disk
        raise WeightsDownloadError(label, url, f"{type(e).__name__}: {e}", target) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ------------------------------------------------------------------------------------------------------ models
def _pretrained_cfg(name: str, seed: SeedModel) -> dict[str, Any]:
    # timm-style cfg, so timm's data config (fastmixer predict / eval) resizes and crops to the same sizes with the
    # same mean/std (0.5 on 0-1 = 127.5 on 0-255); inference_model uses the seed's exact pipeline instead
    p = seed.preprocess
    return dict(
        architecture=name,
        tag=None,
        url=seed.url,
        num_classes=1000,
        input_size=(3, p["crop"], p["crop"]),
        fixed_input_size=True,
        interpolation=p["interpolation"],
        crop_pct=p["crop"] / p["resize_short"],
        crop_mode="center",
        mean=(p["mean"] / 255,) * 3,
        std=(p["std"] / 255,) * 3,
        first_conv="stem.proj",
        classifier="head",
        license="apache-2.0",
        origin="mmpretrain configs/mlp_mixer (converted from timm's weights)",
    )


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and not isinstance(x, bool)


def build_seed_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    checkpoint_path: str | os.PathLike | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """The seed's model `name` as a fastmixer MlpMixer; pretrained=True downloads its published weights, a path (or
    checkpoint_path) loads a local file in any format fastmixer reads."""
    from fastmixer.model import MlpMixer
    from fastmixer.weights import load_checkpoint

    seed = SEED_MODELS[name]
    if pretrained is True:  # fetch (or fail) before allocating the model
        checkpoint_path = download_checkpoint(seed.url, name=name)
    elif _is_path(pretrained):
        checkpoint_path = pretrained
    if checkpoint_path is not None and urllib.parse.urlsplit(str(checkpoint_path)).scheme in ("http", "https"):
        checkpoint_path = download_checkpoint(str(checkpoint_path), name=name)
    if "norm_layer" in kwargs:
        kwargs.setdefault("norm_eps", None)
    model = MlpMixer(**{**_COMMON, **seed.arch, **kwargs})
    model.pretrained_cfg = _pretrained_cfg(name, seed)
    model.default_cfg = model.pretrained_cfg
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=strict)
    return model


def get_model(
    model: str,
    pretrained: bool | str | os.PathLike = False,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """mmpretrain's `get_model` for Mixers: a fastmixer MlpMixer in eval mode.

    model: a seed name (`mlp-mixer-base-p16_3rdparty_64xb64_in1k`, `mlp-mixer-large-p16_3rdparty_64xb64_in1k`), a
    timm name (`mixer_b16_224[.tag]`) or a fastmixer one (`fastmixer_b16_224`, `MixerB16`); see list_models().
    pretrained: False (random init), True (the seed's published checkpoint for seed names, timm's Hub weights for
    timm / fastmixer names), or a local checkpoint path / http(s) URL (timm, mmpretrain or JAX format).
    device: where to put the model. kwargs: MlpMixer arguments (num_classes=10, drop_path_rate=0.1, ...); a
    checkpoint whose head has another size needs the matching num_classes.
    """
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a model name (see fastmixer.list_models()), got {type(model).__name__}; mmpretrain config "
            "files and Config objects are not supported"
        )
    if not (isinstance(pretrained, bool) or _is_path(pretrained)):
        raise TypeError(f"pretrained must be True, False or a checkpoint path, got {type(pretrained).__name__}")
    for key in ("backbone", "neck", "head", "data_preprocessor"):
        if isinstance(kwargs.get(key), dict):
            raise TypeError(
                f"{key}=dict(...) is an mmpretrain config override; pass MlpMixer arguments instead "
                "(e.g. num_classes=10, drop_path_rate=0.1)"
            )
    if model in SEED_MODELS:
        built = build_seed_model(model, pretrained, **kwargs)
    else:
        from fastmixer.registry import create_model, resolve_name

        resolve_name(model)  # unknown names fail here, before any download
        local = pretrained if _is_path(pretrained) else None
        if local is not None and urllib.parse.urlsplit(str(local)).scheme in ("http", "https"):
            local = download_checkpoint(str(local), name=model)
        built = create_model(model, pretrained=pretrained is True, checkpoint_path=local, **kwargs)
    if device is not None:
        built.to(device)
    return built.eval()


def list_models(pattern: str | None = None, exclude_patterns: list[str] | None = None) -> list[str]:
    """Every model name get_model accepts, sorted: the seed's, timm's Mixer names (bare and with each pretrained
    tag) and fastmixer's. As in mmpretrain, `pattern` is a shell wildcard matched against the start of the name
    ("mlp-mixer*", "*b16*"); names matching any of `exclude_patterns` are left out."""
    import timm

    from fastmixer.registry import ARCHS, VARIANTS

    names = set(SEED_MODELS) | set(ARCHS) | set(VARIANTS) | set(timm.list_pretrained("fastmixer_*"))
    for timm_arch, _ in ARCHS.values():
        if timm_arch is not None:
            names.add(timm_arch)
            names.update(timm.list_pretrained(f"{timm_arch}.*"))
    if pattern is not None:
        names = set(fnmatch.filter(names, pattern + "*"))
    for ex in exclude_patterns or ():
        names -= set(fnmatch.filter(names, ex + "*"))
    return sorted(names)


# ------------------------------------------------------------------------------------------------------ inference
def mmpretrain_preprocess(
    image: np.ndarray | Tensor, resize_short: int = 256, crop: int = 224, mean: float = 127.5, std: float = 127.5
) -> Tensor:
    """The seed's test pipeline on one RGB image (uint8 [H, W, 3] array or [3, H, W] tensor) -> float32 [3, crop,
    crop]: short edge to `resize_short` (the long one int(scale * long / short), as mmpretrain's ResizeEdge) with
    OpenCV-style bicubic (a = -0.75, no antialiasing) rounded to uint8, centre crop (offsets rounded as mmcv's
    CenterCrop), then (x - mean) / std."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB array [H, W, 3], got {image.dtype} {image.shape}")
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    elif isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 RGB tensor [3, H, W], got {image.dtype} {tuple(image.shape)}")
        x = image
    else:
        raise TypeError(f"expected a numpy array or a tensor, got {type(image).__name__}")
    h, w = x.shape[-2:]
    if w < h:
        size = (int(resize_short * h / w), resize_short)
    else:
        size = (resize_short, int(resize_short * w / h))
    if size[0] < crop or size[1] < crop:
        raise ValueError(f"image {w}x{h} resized to {size[1]}x{size[0]} is smaller than the {crop}x{crop} crop")
    x = F.interpolate(x[None].float(), size=size, mode="bicubic", align_corners=False)[0]
    x = x.round().clamp(0, 255)  # OpenCV returns uint8
    top, left = round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)  # Python 3 round, as mmcv
    x = x[:, top : top + crop, left : left + crop]
    return ((x - mean) / std).contiguous()


def _to_rgb_array(image: Any) -> np.ndarray:
    """A path or PIL image (RGB) or a numpy array (BGR, as mmpretrain takes arrays from OpenCV) -> RGB uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 BGR image array [H, W, 3] (OpenCV's order), got {image.dtype} {image.shape}"
            )
        return image[..., ::-1]
    from fastmixer.predict import load_image

    return np.asarray(load_image(image))  # path or PIL -> RGB


def inference_model(model: str | nn.Module, *images: Any, device: str | torch.device | None = None, **kwargs: Any):
    """mmpretrain's `inference_model` for Mixers: classify an image with the seed's test preprocessing.

    model: a module, or a name (then built with get_model(name, pretrained=True, **kwargs), as mmpretrain does).
    image: a file path, a PIL image (RGB) or a uint8 numpy array [H, W, 3] in BGR order (OpenCV's, as mmpretrain);
    a list of them gives a list of results. Returns {"pred_scores": float32 numpy [num_classes] (softmax),
    "pred_label": int, "pred_score": float, "pred_class": str (ImageNet name for 1000 classes)}, mmpretrain's keys.
    """
    if len(images) != 1:
        raise TypeError(f"inference_model(model, image) takes one image (or a list of images), got {len(images)}")
    (image,) = images
    if isinstance(model, str):
        model = get_model(model, pretrained=kwargs.pop("pretrained", True), device=device, **kwargs)
    elif kwargs:
        raise TypeError(f"unexpected arguments for a built model: {sorted(kwargs)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    from fastmixer.predict import class_labels

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes < 1:
        raise ValueError("the model has no classifier head (num_classes == 0)")
    if device is not None:
        model.to(device)
    p = next(model.parameters())
    batched = isinstance(image, (list, tuple))
    crop = int(model.stem.img_size[0]) if getattr(model.stem, "img_size", None) else 224
    short = round(crop * 256 / 224)
    x = torch.stack([mmpretrain_preprocess(_to_rgb_array(im), short, crop) for im in (image if batched else [image])])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scores = model(x.to(device=p.device, dtype=p.dtype)).float().softmax(-1).cpu()  # [N, num_classes]
    finally:
        model.train(was_training)
    names = class_labels(num_classes)
    results = []
    for row in scores:
        label = int(row.argmax())
        results.append(
            {
                "pred_scores": row.numpy(),
                "pred_label": label,
                "pred_score": float(row[label]),
                "pred_class": names[label],
            }
        )
    return results if batched else results[0]
