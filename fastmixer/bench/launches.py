"""Count the Triton kernel launches a call makes, on a GPU and under TRITON_INTERPRET=1 alike.

    out, names = count_launches(model, images)      # names: ["token_mix_fwd_kernel", "channel_mix_gemm1", ...]

Every `kernel[grid](...)` launch, autotuned (Autotuner.run -> fn.run) or heuristic-wrapped or not, ends in one call of
the innermost kernel object's `run(..., warmup=False)`: `triton.runtime.jit.JITFunction.run` on a GPU, or
`triton.runtime.interpreter.InterpretedFunction.run` under the interpreter (there is no launcher underneath it). While
a recorder is active both are wrapped, so a nested Autotuner -> JITFunction.run counts once, and warm-up/precompile
calls (warmup=True) count zero. Launches the Autotuner makes while benchmarking its configs (`Autotuner._bench`, GPU
only, the first call per key) are not counted: they belong to tuning, not to the forward.

Same hooks in triton 3.6 and 3.8 (JITFunction.run(*args, grid, warmup, **kwargs), Autotuner._bench). The launcher-
level alternative, `triton.knobs.runtime.launch_enter_hook` (a HookChain in 3.6/3.8; `CompiledKernel.launch_enter_hook`
before triton 3.2), fires only for compiled kernels, never under the interpreter, so it is not used here.
Not counted: kernels torch.compile/inductor generates (their launchers bypass JITFunction.run) and aten ops.
Counting is process-wide (every thread) while a recorder is active.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["count_launches", "record_launches"]

R = TypeVar("R")

_lock = threading.RLock()
_recorders: list[list[str]] = []  # active recorders, outermost first; each launch is appended to all of them
_originals: dict[tuple[type, str], Any] = {}
_tls = threading.local()  # .benchmarking: depth of Autotuner._bench frames on this thread


def _kernel_name(kernel: Any) -> str:
    fn = getattr(kernel, "fn", None)
    return getattr(fn, "__name__", None) or getattr(kernel, "__name__", None) or type(kernel).__name__


def _wrap_run(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def run(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        # Recorded after the launch returns: a launch that raised did not happen.
        if not kwargs.get("warmup", False) and not getattr(_tls, "benchmarking", 0):
            name = _kernel_name(self)
            with _lock:
                for names in _recorders:
                    names.append(name)
        return out

    return run


def _wrap_bench(orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def _bench(self, *args, **kwargs):
        _tls.benchmarking = getattr(_tls, "benchmarking", 0) + 1
        try:
            return orig(self, *args, **kwargs)
        finally:
            _tls.benchmarking -= 1

    return _bench


def _targets() -> list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    targets = [(JITFunction, "run", _wrap_run), (InterpretedFunction, "run", _wrap_run)]
    if hasattr(Autotuner, "_bench"):
        targets.append((Autotuner, "_bench", _wrap_bench))
    return targets


def _install() -> None:
    for cls, attr, wrap in _targets():
        own = cls.__dict__.get(attr)  # None: inherited, so restoring means deleting our override
        _originals[(cls, attr)] = own
        setattr(cls, attr, wrap(getattr(cls, attr)))


def _uninstall() -> None:
    for (cls, attr), own in _originals.items():
        if own is None:
            delattr(cls, attr)
        else:
            setattr(cls, attr, own)
    _originals.clear()


@contextlib.contextmanager
def record_launches() -> Iterator[list[str]]:
    """Context manager yielding a list that receives the kernel name of every Triton launch made inside it, in order.
    Nests: an inner recorder's launches are also seen by the outer ones."""
    names: list[str] = []
    with _lock:
        if not _recorders:
            _install()
        _recorders.append(names)
    try:
        yield names
    finally:
        with _lock:
            del _recorders[next(i for i, r in enumerate(_recorders) if r is names)]
            if not _recorders:
                _uninstall()


def count_launches(fn: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[R, list[str]]:
    """Call fn(*args, **kwargs) -> (its result, names of the Triton kernels it launched, in launch order).

    len(names) is the launch count. Works on CUDA and under TRITON_INTERPRET=1 (see the module docstring for what is
    and is not counted)."""
    if not callable(fn):
        raise TypeError(f"count_launches: fn must be callable, got {type(fn).__name__}")
    with record_launches() as names:
        result = fn(*args, **kwargs)
    return result, list(names)
