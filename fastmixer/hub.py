"""Fetching pretrained weights without waiting on a dead network, and the error that says what to do instead.

Offline, huggingface_hub retries each request with back-off (about 25 s per file, and timm asks for two files), so a
bare `pretrained=True` took ~50 s to fail. Before timm's download, `hub_unreachable()` answers within `TIMEOUT_S`:
HF_HUB_OFFLINE set, or no TCP connection to the Hub (or to the HTTPS proxy) within the timeout. When the Hub is
unreachable, `cache_only()` switches huggingface_hub to offline mode for the fetch, so a file already in the local cache
still loads and a missing one fails at once. A failed fetch raises `PretrainedFetchError`, whose message names the Hub
id and the route that fits the caller (Python: `checkpoint_path=`; the CLI: `--checkpoint FILE`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

__all__ = ["TIMEOUT_S", "PretrainedFetchError", "cache_only", "hub_unreachable"]

TIMEOUT_S = 3.0  # DNS lookup + TCP connect to the Hub (or proxy), together
_checked: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, reason or None)
_RECHECK_S = 60.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> tuple[str, int, str]:
    """(host, port, what) of the first hop towards the Hub: the HTTPS proxy if one is set, else the Hub endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    if proxy:
        u = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return u.hostname or "", u.port or 8080, f"HTTPS proxy {u.hostname}:{u.port or 8080}"
    try:
        from huggingface_hub import constants

        url = constants.ENDPOINT
    except ImportError:
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return u.hostname or "", port, f"{u.hostname}:{port}"


def _connect(host: str, port: int, timeout_s: float) -> str | None:
    # DNS has no timeout of its own: resolve and connect in a daemon thread and stop waiting after timeout_s
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(None)
        except Exception as e:  # OSError (DNS, refused, timeout) or anything odd: never an unhandled thread error
            result.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=attempt, daemon=True, name="fastmixer-hub-check")
    t.start()
    t.join(timeout_s)
    return result[0] if result else f"no answer within {timeout_s:g} s"


def hub_unreachable(timeout_s: float = TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be reached now (HF_HUB_OFFLINE set, or no TCP connection within timeout_s),
    or None when it answered. A result is reused for a minute."""
    try:
        from huggingface_hub import constants

        offline = bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        offline = False
    if offline or _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    host, port, what = _endpoint()
    if not host:
        return None  # nothing to check; let the download report
    seen = _checked.get((host, port))
    if seen is not None and time.monotonic() - seen[0] < _RECHECK_S:
        return seen[1]
    error = _connect(host, port, timeout_s)
    reason = None if error is None else f"cannot connect to {what} ({error})"
    _checked[(host, port)] = (time.monotonic(), reason)
    return reason


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub in offline mode (local cache only, no requests, no retries) inside the block."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


class PretrainedFetchError(RuntimeError):
    """Pretrained weights could not be fetched. `str(e)` gives the Python route; `e.cli_message()` the CLI's."""

    def __init__(self, name: str, source: str, reason: str, hub_id: str | None = None) -> None:
        self.name, self.source, self.reason, self.hub_id = name, source, reason, hub_id
        super().__init__(
            f"{self._what()} Pass the file instead: "
            f"fastmixer.create_model('{name}', checkpoint_path='model.safetensors') or "
            "fastmixer.load_checkpoint(model, path) (timm .pth/.safetensors, mmpretrain .pth and JAX .npz all work)"
        )

    def _what(self) -> str:
        where = f"model.safetensors of https://huggingface.co/{self.hub_id}" if self.hub_id else "that checkpoint"
        return (
            f"could not fetch pretrained weights for {self.name} from {self.source}: {self.reason}. "
            f"Download {where} on a machine with network access."
        )

    def cli_message(self) -> str:
        """The same error for the command line: the route is `--checkpoint FILE`."""
        return f"{self._what()} Then pass it with --checkpoint FILE (instead of --pretrained)."
