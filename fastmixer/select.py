"""Runtime selection: per call signature, run whichever of the fused Triton path and the reference path is faster.

The reference path (fastmixer.reference) is timm's own aten composition (cuBLAS GEMMs, aten LayerNorm/GELU/add). No one
can promise from a CPU that a fused kernel beats it on every shape and GPU, so on CUDA the first call of `token_mix` or
`channel_mix` with a new key times both and keeps the faster:

  key = op, x's shape and dtype, weight / LayerNorm / autocast dtypes, hidden width, branch_scale given or not, act,
        allow_tf32, gradient needed or not (inference times the forward; training times forward + backward),
        plus the environment: device name and compute capability, fastmixer, torch and triton versions.

Timing (`cuda_timer`): warm-up calls (Triton compiles and autotunes there), then REPEATS samples of each, interleaved
and in alternating order, each sample long enough for CUDA events to resolve (several calls when one is short). Rule
(`decide`): the reference path is kept only when its median is more than TIE_MARGIN faster AND the interquartile
ranges do not overlap; ties keep the fused path (it saves only each op's input for backward, a memory gain the timer
does not see, and a margin stops the choice flipping between runs on noise), and a noisy verdict keeps the fused path
for this process only (not written to disk, so the next process measures again).

Cache: in memory, and on disk in CACHE_NAME under FASTMIXER_CACHE_DIR, else $XDG_CACHE_HOME/fastmixer, else
~/.cache/fastmixer. Writes hold a lock file (POSIX) and replace the file atomically (write a temporary, rename), merging
what other processes wrote. Entries of another device or version never match a key (they are kept for that device).
A corrupt file is ignored with one warning and rewritten; an unwritable folder keeps choices in memory (one warning).

FASTMIXER_SELECT (read at each choice; case-insensitive):
  * auto (default, also when unset or empty): cached choice, else time it (CUDA, eager) and cache it;
  * fused: always the fused path; nothing timed, the cache neither read nor written; `selection()` lists each key met
    as forced;
  * reference: always the reference path (as FASTMIXER_BACKEND=reference does for these two ops); listed as forced;
  * off: the selection layer steps aside: no key, no timing, no cache, nothing recorded; the backend alone decides
    (fused on CUDA), exactly as before selection existed. `off` and `fused` run the same kernels; `off` skips the
    bookkeeping.
Any other value raises ValueError at the first call the selection decides. It applies only where the backend is
"auto" and the tensors are CUDA: an explicit backend (FASTMIXER_BACKEND, set_backend, use_backend) always wins, and
CPU tensors run the reference path without any timing. norm_pool is not selected: it runs once per forward (not per
block) as one memory-bound kernel.

torch.compile: the choice is made while dynamo traces (a constant in the graph, via `assume_constant_result`), from
the cache only: nothing is timed inside a trace. A key not cached yet uses TRACED_DEFAULT ("fused", the behaviour before
selection existed) with one warning per key; run the model once eagerly before compiling (same shapes, dtypes, grad
mode), or call `fastmixer.tune_selection`, to have it measured first. Shapes are specialised (each shape its own graph).
A compiled graph keeps the choice it was traced with until it is traced again (torch._dynamo.reset()). The same
untimed default applies under any other tracing (fake tensors, a TorchDispatchMode such as fastmixer's launch counter,
tensor subclasses, torch.func transforms, CUDA graph capture). Timing inside activation checkpointing is safe: the
candidates' saved tensors bypass the checkpoint's saved-tensor hooks.

Correctness: the choice is made before dispatch, per call, so a call's forward and backward always belong to one
implementation (the reference path's backward is aten autograd, the fused one the registered Triton backward). Both
are tested against each other within the kernels' tolerances; the reference path is bit-identical to timm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import operator
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

MODES = ("auto", "fused", "reference", "off")
CHOICES = ("fused", "reference")
TIE_MARGIN = 0.03  # the reference path must be > 3% faster (median) to be kept
TRACED_DEFAULT = "fused"  # under tracing, for a key not in the cache
WARMUP = 3
REPEATS = 12
SAMPLE_MS = 1.0  # one timing sample runs the candidate enough times to last about this long
MAX_INNER = 50
CACHE_NAME = "selection-v1.json"
FORMAT = 1
MAX_ENTRIES = 4096

Candidates = Mapping[str, Callable[[], object]]
Timer = Callable[[Candidates], Mapping[str, Sequence[float]]]


# ------------------------------------------------------------------------------------------------ mode and key
_parsed_mode: tuple[str, str] = ("", "auto")  # (raw FASTMIXER_SELECT, its mode): parsed again only when it changes


def mode() -> str:
    """FASTMIXER_SELECT, validated: "auto" (default), "fused", "reference" or "off"."""
    global _parsed_mode
    raw = os.environ.get("FASTMIXER_SELECT", "")
    if raw == _parsed_mode[0]:
        return _parsed_mode[1]
    value = raw.strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"FASTMIXER_SELECT must be one of {MODES} (unset or empty means auto), got {raw!r}")
    _parsed_mode = (raw, value)
    return value


def applies(x: Tensor, backend: str) -> bool:
    """Whether the selection decides this call: the backend is "auto" (nothing forced) and x is on CUDA."""
    return backend == "auto" and x.is_cuda


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def signature(
    kind: str, args: Sequence[Tensor | None], *, act: str, mm_dtype: torch.dtype | None, allow_tf32: bool
) -> str:
    """The call's part of the key (traceable by dynamo: shapes are specialised with operator.index)."""
    x, ln_weight, _, fc1_weight = args[0], args[1], args[2], args[3]
    branch_scale = args[7] if len(args) > 7 else None
    grad = False
    if torch.is_grad_enabled():
        for t in args:
            if t is not None and t.requires_grad:
                grad = True
    shape = "x".join([str(operator.index(d)) for d in x.shape])
    hidden = operator.index(fc1_weight.shape[0])
    mm = "none" if mm_dtype is None else _dtype_name(mm_dtype)
    return (
        f"op={kind}_mix|x={shape}|dtype={_dtype_name(x.dtype)}|w={_dtype_name(fc1_weight.dtype)}"
        f"|ln={_dtype_name(ln_weight.dtype)}|autocast={mm}|hidden={hidden}|scale={int(branch_scale is not None)}"
        f"|act={act}|tf32={int(allow_tf32)}|grad={int(grad)}"
    )


def device_description(device: torch.device) -> str:
    """Device name and compute capability ("NVIDIA H100 80GB HBM3 sm_90"); the device type elsewhere."""
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"


def environment(device: torch.device) -> str:
    """The environment's part of the key: device, fastmixer, torch and triton versions."""
    import fastmixer

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return (
        f"device={device_description(device)}|fastmixer={fastmixer.__version__}|torch={torch.__version__}"
        f"|triton={triton_version}"
    )


# ------------------------------------------------------------------------------------------------ state
@dataclass
class _State:
    memory: dict  # key -> record (timed, read from disk, or forced)
    untimed: dict  # key -> record (untimed defaults: tracing, a dispatch mode, ...; a later eager call still times)
    warned: set
    lock: threading.RLock
    fast: dict  # eager fast path: (mode, device, the signature's fields as objects) -> backend, for settled choices


_STATE = _State(memory={}, untimed={}, warned=set(), lock=threading.RLock(), fast={})


def _warn_once(tag: object, message: str) -> None:
    with _STATE.lock:
        if tag in _STATE.warned:
            return
        _STATE.warned.add(tag)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _record(choice: str, reason: str, source: str, fused_ms: float | None = None, reference_ms: float | None = None):
    return {
        "choice": choice,
        "reason": reason,
        "source": source,
        "fused_ms": fused_ms,
        "reference_ms": reference_ms,
        "time": time.time(),
    }


# ------------------------------------------------------------------------------------------------ disk cache
def cache_path() -> Path:
    """The cache file: FASTMIXER_CACHE_DIR/, else $XDG_CACHE_HOME/fastmixer/, else ~/.cache/fastmixer/ + CACHE_NAME."""
    root = os.environ.get("FASTMIXER_CACHE_DIR")
    if root:
        return Path(root).expanduser() / CACHE_NAME
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastmixer" / CACHE_NAME


def _valid(record: object) -> bool:
    if not isinstance(record, dict) or record.get("choice") not in CHOICES:
        return False
    return all(record.get(k) is None or isinstance(record.get(k), (int, float)) for k in ("fused_ms", "reference_ms"))


def _read_entries(path: Path) -> dict:
    """The file's entries; {} when it is missing. A corrupt or unreadable file: {} and one warning per path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # missing (the folder's problem is reported on writing)
        return {}
    except (OSError, ValueError) as e:
        _warn_once(("read", str(path)), f"fastmixer: ignoring the selection cache {path}: cannot read it ({e})")
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        data, problem = None, f"not valid JSON ({e})"
    else:
        problem = "not a fastmixer selection cache (expected {'format': 1, 'entries': {...}})"
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        _warn_once(
            ("corrupt", str(path)), f"fastmixer: ignoring the selection cache {path}: {problem}; it will be rewritten"
        )
        return {}
    entries = {k: v for k, v in data["entries"].items() if isinstance(k, str) and _valid(v)}
    if len(entries) != len(data["entries"]):
        dropped = len(data["entries"]) - len(entries)
        _warn_once(
            ("corrupt", str(path)), f"fastmixer: ignoring {dropped} malformed entries of the selection cache {path}"
        )
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on PATH.lock (POSIX flock; elsewhere no lock: the rename alone keeps the file whole)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _persist(key: str, record: dict) -> None:
    """Merge one entry into the cache file: under the lock, re-read, add, write a temporary, rename it over the file."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            entries = _read_entries(path)
            entries[key] = {k: record[k] for k in ("choice", "reason", "fused_ms", "reference_ms", "time")}
            if len(entries) > MAX_ENTRIES:  # drop the oldest
                keep = sorted(entries, key=lambda k: entries[k].get("time") or 0)[-MAX_ENTRIES:]
                entries = {k: entries[k] for k in keep}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"format": FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as e:
        _warn_once(
            ("write", str(path)),
            f"fastmixer: cannot write the selection cache {path} ({e}); choices are kept in memory for this process",
        )


def _cached(key: str) -> dict | None:
    """Memory, then disk (a disk hit is remembered in memory)."""
    record = _STATE.memory.get(key)
    if record is not None:
        return record
    record = _read_entries(cache_path()).get(key)
    if record is not None:
        record = {**record, "source": "disk"}
        _STATE.memory[key] = record
    return record


# ------------------------------------------------------------------------------------------------ timing
def cuda_timer(candidates: Candidates, warmup: int = WARMUP, repeats: int = REPEATS) -> dict[str, list[float]]:
    """Milliseconds per call of each candidate, REPEATS samples each, with CUDA events on the current stream.

    Warm-up first (compiles, autotunes, allocator), then samples interleaved in alternating order so that clock and
    thermal drift hit both alike; a sample repeats a short candidate until it lasts about SAMPLE_MS.
    """
    names = list(candidates)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample(name: str, inner: int) -> float:
        fn = candidates[name]
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner

    for name in names:
        for _ in range(warmup):
            candidates[name]()
    torch.cuda.synchronize()
    inner = {name: max(1, min(MAX_INNER, math.ceil(SAMPLE_MS / max(sample(name, 1), 1e-3)))) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(sample(name, inner[name]))
    return samples


timer: Timer = cuda_timer  # tests replace this with an injected timer


@dataclass(frozen=True)
class Verdict:
    choice: str  # "fused" | "reference"
    reason: str
    fused_ms: float | None  # medians
    reference_ms: float | None
    persist: bool  # written to disk (False: noisy or failed, measured again by the next process)


def _clean(samples: object) -> list[float]:
    if not isinstance(samples, Sequence):
        return []
    return [float(s) for s in samples if isinstance(s, (int, float)) and math.isfinite(s) and s > 0]


def decide(samples: Mapping[str, Sequence[float]], tie_margin: float = TIE_MARGIN) -> Verdict:
    """Fused vs reference from per-call times in ms (see the module docstring for the rule)."""
    fused, ref = _clean(samples.get("fused")), _clean(samples.get("reference"))
    if len(fused) < 3 or len(ref) < 3:
        return Verdict("fused", "timing failed (fewer than 3 valid samples)", None, None, persist=False)
    mf, mr = statistics.median(fused), statistics.median(ref)
    if mf <= mr:
        reason = "faster" if mf * (1 + tie_margin) < mr else f"tie (within {tie_margin:.0%})"
        return Verdict("fused", reason, mf, mr, persist=True)
    if mr * (1 + tie_margin) >= mf:
        return Verdict("fused", f"tie (reference within {tie_margin:.0%}: fused kept)", mf, mr, persist=True)
    q1_fused = statistics.quantiles(fused, n=4, method="inclusive")[0]
    q3_ref = statistics.quantiles(ref, n=4, method="inclusive")[2]
    if q3_ref >= q1_fused:
        return Verdict("fused", "noisy (quartiles overlap): fused kept, not cached on disk", mf, mr, persist=False)
    return Verdict("reference", "faster", mf, mr, persist=True)


def _keep(t: Tensor) -> Tensor:
    return t


def _candidates(kind: str, args: Sequence[Tensor | None], *, eps: float, act: str, grad: bool) -> dict:
    """Two zero-argument callables running this very call on each path (forward; forward + backward when grad).

    Inputs are detached copies-by-reference (no .grad is touched, no hook fires), the output gradient is a constant
    (no random numbers drawn), saved tensors bypass outer saved-tensor hooks (activation checkpointing), and each runs
    through the public op under an explicit backend, so the autocast state, argument checks and casts are the real
    ones and the selection does not re-enter.
    """
    from fastmixer import ops

    fn = ops.token_mix if kind == "token" else ops.channel_mix
    leaves = [None if t is None else t.detach().requires_grad_(grad and t.requires_grad) for t in args]
    tensors, branch_scale = leaves[:7], leaves[7] if len(leaves) > 7 else None
    wrt = [t for t in leaves if t is not None and t.requires_grad]

    def run(backend: str) -> Callable[[], object]:
        def call() -> object:
            # Identity saved-tensor hooks shadow any outer ones: under torch.utils.checkpoint (non-reentrant), the
            # candidates' saved tensors would otherwise be counted as the checkpointed region's own.
            with ops.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                if not grad:
                    with torch.no_grad():
                        return fn(*tensors, eps=eps, branch_scale=branch_scale, act=act)
                out = fn(*tensors, eps=eps, branch_scale=branch_scale, act=act)
                return torch.autograd.grad(out, wrt, torch.ones_like(out))

        return call

    return {"fused": run("triton"), "reference": run("reference")}


def _untimed_reason(args: Sequence[Tensor | None]) -> str | None:
    """Why this call may not be timed now (None: it may)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    if _get_current_dispatch_mode_stack():
        return "a TorchDispatchMode is active"
    if torch._guards.detect_fake_mode() is not None:
        return "tracing"
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
    for t in args:
        if t is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
            return f"a {type(t).__name__} argument"
        if t is not None and wrapped(t):
            return "a torch.func transform (vmap, grad, ...)"
    x = args[0]
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return "CUDA graph capture"
    return None


# ------------------------------------------------------------------------------------------------ the choice
def _backend(choice: str) -> str:
    return "triton" if choice == "fused" else "reference"


def _default(key: str, why: str) -> str:
    _STATE.untimed.setdefault(key, _record(TRACED_DEFAULT, f"not timed ({why}): default", "default"))
    return _backend(TRACED_DEFAULT)


@torch.compiler.assume_constant_result
def _traced_choice(sig: str, device: str) -> str:
    """The backend for a call met while dynamo traces: from the cache, else TRACED_DEFAULT. Runs as plain Python at
    trace time (assume_constant_result); its answer is a constant of the graph."""
    current = mode()
    if current == "off":
        return "triton"
    key = f"{sig}|{environment(torch.device(device))}"
    if current != "auto":
        _STATE.memory[key] = _record(current, "forced by FASTMIXER_SELECT", "forced")
        return _backend(current)
    with _STATE.lock:
        record = _cached(key)
    if record is not None:
        return _backend(record["choice"])
    _warn_once(
        ("traced", key),
        f"fastmixer: {sig.split('|')[0][3:]} meets a new key while torch.compile traces; nothing is timed inside a "
        f"trace, so the graph uses the {TRACED_DEFAULT} path ({key}). Run the model once eagerly before compiling "
        "(or call fastmixer.tune_selection) to have it measured.",
    )
    return _default(key, "traced by torch.compile")


def choose(
    kind: str,
    args: Sequence[Tensor | None],
    *,
    eps: float,
    act: str,
    mm_dtype: torch.dtype | None,
    allow_tf32: bool,
) -> str:
    """The backend ("triton" or "reference") for one token_mix / channel_mix call that `applies` to.

    args: (x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale), the op's own tensors.
    """
    if torch.compiler.is_compiling():
        sig = signature(kind, args, act=act, mm_dtype=mm_dtype, allow_tf32=allow_tf32)
        return _traced_choice(sig, str(args[0].device))
    current = mode()
    if current == "off":
        return "triton"
    # Fast path (a few us per call): the same fields as the key, as hashable objects, for choices already settled.
    x, fc1_weight = args[0], args[3]
    grad = False
    if torch.is_grad_enabled():
        for t in args:
            if t is not None and t.requires_grad:
                grad = True
                break
    branch_scale = args[7] if len(args) > 7 else None
    fields = (current, kind, x.device, x.shape, x.dtype, fc1_weight.dtype, args[1].dtype, fc1_weight.shape[0])
    fast = (*fields, mm_dtype, branch_scale is not None, act, allow_tf32, grad)
    backend = _STATE.fast.get(fast)
    if backend is not None:
        return backend
    sig = signature(kind, args, act=act, mm_dtype=mm_dtype, allow_tf32=allow_tf32)
    key = f"{sig}|{environment(x.device)}"
    if current != "auto":
        _STATE.memory[key] = _record(current, "forced by FASTMIXER_SELECT", "forced")
        _STATE.fast[fast] = _backend(current)
        return _backend(current)
    with _STATE.lock:
        record = _cached(key)
        if record is not None:
            _STATE.fast[fast] = _backend(record["choice"])
            return _backend(record["choice"])
        why = _untimed_reason(args)
        if why is not None:
            return _default(key, why)
        try:
            samples = timer(_candidates(kind, args, eps=eps, act=act, grad=grad))
        except torch.cuda.OutOfMemoryError:  # the fused path for this process (not on disk: memory may free up)
            _warn_once(("oom", key), f"fastmixer: timing {kind}_mix ran out of GPU memory; using the fused path")
            _STATE.memory[key] = _record("fused", "timing ran out of memory: fused kept", "default")
            _STATE.fast[fast] = "triton"
            return "triton"
        verdict = decide(samples)
        record = _record(verdict.choice, verdict.reason, "timed", verdict.fused_ms, verdict.reference_ms)
        _STATE.memory[key] = record
        _STATE.untimed.pop(key, None)
        _STATE.fast[fast] = _backend(verdict.choice)
    if verdict.persist:
        _persist(key, record)
    return _backend(verdict.choice)


# ------------------------------------------------------------------------------------------------ public API
def selection() -> dict[str, dict]:
    """This process's choices: key -> {"choice", "reason", "source" (timed | disk | forced | default), "fused_ms",
    "reference_ms" (median ms per call, when timed), "time"}. An untimed default is listed unless a timed choice
    replaced it."""
    with _STATE.lock:
        merged = {k: dict(v) for k, v in _STATE.untimed.items()}
        merged.update({k: dict(v) for k, v in _STATE.memory.items()})
    return merged


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def describe_selection() -> list[str]:
    """Printable lines: the mode, the cache file, and one line per key this process has met."""
    try:
        current = mode()
    except ValueError as e:
        current = f"invalid ({e})"
    lines = [f"runtime selection: FASTMIXER_SELECT={current}; cache {cache_path()}"]
    entries = selection()
    if not entries:
        lines.append(
            "  no fused op has met the selection in this process (it runs for CUDA tensors on the auto backend)"
        )
    for key, rec in sorted(entries.items()):
        fields = dict(part.split("=", 1) for part in key.split("|"))
        what = (
            f"{fields['op']} x={fields['x']} {fields['dtype']} hidden={fields['hidden']}"
            f"{'' if fields['autocast'] == 'none' else ' autocast=' + fields['autocast']}"
            f" {'forward+backward' if fields['grad'] == '1' else 'forward'}"
        )
        timing = f"; fused {_fmt_ms(rec['fused_ms'])}, reference {_fmt_ms(rec['reference_ms'])}"
        lines.append(f"  {what}: {rec['choice']} ({rec['reason']}, {rec['source']}{timing}) on {fields['device']}")
    return lines


def clear_selection_cache(disk: bool = True) -> None:
    """Forget every choice of this process and, with disk=True, delete the cache file (every device's entries).
    Graphs torch.compile already traced keep their choice until torch._dynamo.reset()."""
    with _STATE.lock:
        _STATE.memory.clear()
        _STATE.untimed.clear()
        _STATE.warned.clear()
        _STATE.fast.clear()
    if disk:
        with contextlib.suppress(FileNotFoundError):
            cache_path().unlink()


def tune_selection(model: torch.nn.Module, *example_inputs: Tensor, train: bool = False) -> list[str]:
    """Run `model` once eagerly (forward; with train=True forward + backward) so that every key it meets is timed and
    cached before torch.compile traces it. Returns describe_selection()'s lines. Gradients it makes are discarded."""
    with torch.set_grad_enabled(train):
        out = model(*example_inputs)
        if train:
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    return describe_selection()


# ------------------------------------------------------------------------------------------------ GPU report step
MODEL_SHAPES = {"s16": (16, 512), "b16": (16, 768), "l16": (16, 1024), "b32": (32, 768), "l32": (32, 1024)}


def measure(
    models: Sequence[str],
    batch: int,
    dtype: torch.dtype,
    device: str = "cuda",
    grad_modes: Sequence[bool] = (False, True),
) -> list[str]:
    """Time fused vs reference for token_mix and channel_mix at each model's block shapes (224 px, mlp ratios 0.5 and
    4), forward and forward + backward, through the real selection (auto backend, fresh in-memory state); returns the
    printable lines of what was chosen. Random tensors in `dtype` (no autocast)."""
    from fastmixer import ops

    clear_selection_cache(disk=False)
    for name in models:
        if name not in MODEL_SHAPES:
            raise ValueError(f"model must be one of {sorted(MODEL_SHAPES)}, got {name!r}")
        patch, c = MODEL_SHAPES[name]
        s = (224 // patch) ** 2
        for grad in grad_modes:
            for kind, n, d in (("token", s, c // 2), ("channel", c, 4 * c)):
                shapes = ((batch, s, c), (c,), (c,), (d, n), (d,), (n, d), (n,))
                scales = (1.0, 1.0, 0.02, 0.02, 0.02, 0.02, 0.02)  # x, LN weight: unit scale; the rest small
                g = torch.Generator(device="cpu").manual_seed(0)
                tensors = [
                    (std * torch.randn(shape, generator=g)).to(device=device, dtype=dtype).requires_grad_(grad)
                    for shape, std in zip(shapes, scales)
                ]
                fn = ops.token_mix if kind == "token" else ops.channel_mix
                with ops.use_backend("auto"), torch.set_grad_enabled(grad):
                    fn(*tensors)
    return describe_selection()


def main(argv: Sequence[str] | None = None) -> int:
    """python -m fastmixer.select --models b16,l16 --batch 256 --dtype bf16: time and print the selection."""
    parser = argparse.ArgumentParser(prog="python -m fastmixer.select", description=main.__doc__)
    parser.add_argument("--models", default="b16", help=f"comma-separated, from {sorted(MODEL_SHAPES)}")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda")
    ns = parser.parse_args(argv)
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: the runtime selection runs only for CUDA tensors; nothing to time", file=sys.stderr)
        return 1
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[ns.dtype]
    print(f"fused vs reference per op, batch {ns.batch}, {ns.dtype}, median ms per call ({REPEATS} samples)")
    for line in measure(ns.models.split(","), ns.batch, dtype, ns.device):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
