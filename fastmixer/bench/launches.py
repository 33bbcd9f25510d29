"""The one Triton launch recorder, on a GPU and under TRITON_INTERPRET=1 alike (used by counting, the tests and the
benchmarks).

    out, names = count_launches(model, images)      # names: ["token_mix_fwd_kernel", "channel_mix_gemm1", ...]
    with LaunchRecorder(execute=False) as rec:      # dry: each launch is logged (name, tensors, grid, arguments)
        model(images)                               # and skipped; outputs hold garbage

Every `kernel[grid](...)` launch calls the `run(*args, grid=..., warmup=False, **kwargs)` method of the outermost
kernel object: an Autotuner, a Heuristics wrapper, a JITFunction (GPU) or the interpreter's InterpretedFunction. While a
recorder is active those `run` methods are wrapped and only the outermost call of a launch is recorded: the calls nested
inside it (an autotuner's inner kernel, the launches it makes while benchmarking its configs on the first call per key)
are not, and neither are compile-only warm-ups (warmup=True). A launch is recorded once it returns (a launch that
raised did not happen), or at once when a recorder is dry (execute=False: then it is not run). Every active recorder
sees every launch (recorders nest); recording is process-wide (every thread) while one is active.

Same hooks in triton 3.6 and 3.8. The launcher-level alternative, `triton.knobs.runtime.launch_enter_hook`, fires only
for compiled kernels, never under the interpreter, so it is not used. Not recorded: kernels torch.compile/inductor
generates (their launchers bypass these `run` methods) and aten ops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["Launch", "LaunchRecorder", "TensorArg", "count_launches", "launching", "record_launches"]

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """What a launch argument tensor looked like (its data is not kept)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str  # "bfloat16", "float32", ...


@dataclasses.dataclass
class Launch:
    """One Triton launch: the kernel's function name, its tensor arguments (positional and keyword, in order), its grid
    (a tuple, or the callable triton evaluates with the launch's meta-parameters) and its arguments by name (tensors
    as TensorArg)."""

    name: str
    tensors: list[Tensor]
    grid: Any = None
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


_lock = threading.RLock()
_active: list[LaunchRecorder] = []  # outermost first
_originals: dict[type, Callable[..., Any]] = {}
_tls = threading.local()  # .depth: launches running on this thread (> 0 inside a launch)


def launching() -> bool:
    """True while a recorded launch runs on this thread (the interpreter's own aten work is then not a kernel)."""
    return getattr(_tls, "depth", 0) > 0


def _kernel_name(kernel: Any) -> str:
    # Autotuner -> (Heuristics ->) JITFunction / InterpretedFunction -> the Python function
    obj = getattr(kernel, "base_fn", kernel)
    while not inspect.isfunction(obj) and hasattr(obj, "fn"):
        obj = obj.fn
    return getattr(obj, "__name__", type(kernel).__name__)


def _named_args(kernel: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    # Positional arguments through the kernel's arg_names; the launch machinery's own keywords (grid, warmup) left out.
    out = dict(zip(getattr(kernel, "arg_names", None) or [], args))
    out.update((k, v) for k, v in kwargs.items() if k not in ("grid", "warmup"))
    return {
        k: TensorArg(tuple(v.shape), tuple(v.stride()), str(v.dtype).replace("torch.", ""))
        if isinstance(v, Tensor)
        else v
        for k, v in out.items()
    }


def _classes() -> list[type]:
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    out = [JITFunction, Autotuner, Heuristics]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        out.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - a triton without the interpreter
        pass
    return out


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    def run(self, *args, **kwargs):
        if launching() or kwargs.get("warmup", False):  # nested in a launch, or compile-only
            return original(self, *args, **kwargs)
        with _lock:
            recorders = list(_active)
        if not recorders:
            return original(self, *args, **kwargs)
        launch = Launch(
            _kernel_name(self),
            [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)],
            kwargs.get("grid"),
            _named_args(self, args, kwargs),
        )
        if not all(r.execute for r in recorders):  # dry: log it, skip it
            for r in recorders:
                r._add(launch)
            return None
        _tls.depth = getattr(_tls, "depth", 0) + 1
        try:
            out = original(self, *args, **kwargs)
        finally:
            _tls.depth -= 1
        for r in recorders:
            r._add(launch)
        return out

    return run


def _install() -> None:
    for klass in _classes():
        _originals[klass] = klass.__dict__["run"]
        klass.run = _wrap(_originals[klass])


def _uninstall() -> None:
    for klass, original in _originals.items():
        klass.run = original
    _originals.clear()


class LaunchRecorder:
    """Context manager recording every Triton launch made inside it, in order: into `.launches`, or, with
    `on_launch`, into that callback only (then no Launch, nor its tensors, is kept here).

    execute=False skips the launches (outputs stay uninitialised): a dry run for counting real-size models on a CPU
    without running the kernels under the interpreter.
    """

    def __init__(self, execute: bool = True, on_launch: Callable[[Launch], None] | None = None) -> None:
        self.execute = execute
        self.on_launch = on_launch
        self.launches: list[Launch] = []

    def _add(self, launch: Launch) -> None:
        if self.on_launch is None:
            self.launches.append(launch)
        else:
            self.on_launch(launch)

    def __enter__(self) -> LaunchRecorder:
        with _lock:
            if not _active:
                _install()
            _active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            del _active[next(i for i, r in enumerate(_active) if r is self)]
            if not _active:
                _uninstall()


@contextlib.contextmanager
def record_launches() -> Iterator[list[str]]:
    """Context manager yielding a list that receives the kernel name of every Triton launch made inside it, in order.
    Nests: an inner recorder's launches are also seen by the outer ones."""
    names: list[str] = []
    with LaunchRecorder(on_launch=lambda launch: names.append(launch.name)):
        yield names


def count_launches(fn: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[R, list[str]]:
    """Call fn(*args, **kwargs) -> (its result, names of the Triton kernels it launched, in launch order).

    len(names) is the launch count. Works on CUDA and under TRITON_INTERPRET=1 (see the module docstring for what is
    and is not counted)."""
    if not callable(fn):
        raise TypeError(f"count_launches: fn must be callable, got {type(fn).__name__}")
    with record_launches() as names:
        result = fn(*args, **kwargs)
    return result, list(names)
