"""Opening image files with errors a person can act on: one line that names the file and says what is wrong.

PIL reports a bad file in many shapes (OSError "image file is truncated", UnidentifiedImageError, SyntaxError "broken
PNG file", DecompressionBombError, zlib/struct errors...) and never names the file. `open_rgb` turns each into an
`ImageReadError` (a ValueError; `ImageNotFoundError` is also a FileNotFoundError) whose message is
"cannot read image '<path>': <reason>".
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageNotFoundError", "ImageReadError", "open_rgb", "pixel_limit"]


class ImageReadError(ValueError):
    """An image file that cannot be used; `path` and `reason` are kept apart for callers that log them."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """No file at that path."""


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) set to `max_pixels` inside the block: None keeps the
    current one, 0 removes it. PIL warns above the limit and refuses images over twice it."""
    if max_pixels is None:
        yield
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an int >= 0 (0: no limit), got {max_pixels!r}")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels or None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _bomb_reason(e: Exception) -> str:
    # PIL: "Image size (196000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack."
    found = re.findall(r"(\d+) pixels", str(e))
    size = f"{int(found[0]):,} pixels" if found else str(e)
    return (
        f"too large: {size}, over PIL's decompression-bomb limit (twice Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS or 0:,}). If you trust the file, raise the limit: --max-image-pixels N on the "
        "command line, PIL.Image.MAX_IMAGE_PIXELS = N in Python"
    )


def open_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read an image file fully and return it as an RGB PIL image (greyscale, palette, RGBA, CMYK are converted).

    max_pixels: PIL's decompression-bomb limit for this read (None: PIL's current Image.MAX_IMAGE_PIXELS; 0: none).
    Raises ImageNotFoundError for a missing path and ImageReadError for a directory, an unreadable file, a file PIL
    does not recognise, a truncated or damaged one, and an image over the pixel limit.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected an image path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ImageNotFoundError(p, "no such file")
    if p.is_dir():
        raise ImageReadError(p, "it is a directory, not an image file")
    with pixel_limit(max_pixels):
        try:
            with Image.open(p) as img:
                img.load()  # decode now: truncation and damage surface here, not in a later transform
                return img.convert("RGB")
        except Image.DecompressionBombError as e:
            raise ImageReadError(p, _bomb_reason(e)) from e
        except PermissionError as e:
            raise ImageReadError(p, "permission denied") from e
        except UnidentifiedImageError as e:
            raise ImageReadError(p, "not an image format PIL recognises (corrupt, empty, or not an image)") from e
        except OSError as e:
            if "truncat" in str(e).lower():
                raise ImageReadError(p, "the file is truncated (incomplete image data)") from e
            raise ImageReadError(p, f"damaged image data ({type(e).__name__}: {e})") from e
        except Exception as e:  # SyntaxError "broken PNG file", zlib.error, struct.error, EOFError ... from decoders
            raise ImageReadError(p, f"damaged image data ({type(e).__name__}: {e})") from e
