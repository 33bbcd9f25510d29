"""Benchmark harness, shared by `fastmixer bench` and `pytest bench/` (bench/ is not installed: it imports this).

Providers, timed in the same process and run:
  fastmixer          fastmixer's model / ops (fused Triton kernels on CUDA; the reference PyTorch path on CPU)
  fastmixer+compile  torch.compile of the above (mode="reduce-overhead", i.e. CUDA graphs, on CUDA)
  timm               timm eager (timm's own MlpMixer / MixerBlock modules)
  timm+compile       torch.compile of timm (mode="max-autotune" on CUDA)
  cublas             only the model's GEMMs (stem, 4 per block, head; x3 for a training step) through torch.mm:
                     cuBLAS on CUDA, the practical limit of any implementation
Levels: "model" (variant b16/l16/..., mode "inference" or "training" = forward + cross-entropy + backward + SGD step)
and "op" (token_mix / channel_mix at a variant's shapes, mode "forward" or "forward+backward").

Timing: on CUDA, CUDA events around each call after warm-up (which also runs autotuning and compilation); on CPU,
time.perf_counter. Reported: median ms, img/s, TFLOP/s (GEMM FLOPs, 2 per multiply-add), % of the device's dense
peak (CUDA only) and peak memory allocated (CUDA only). CPU numbers are labelled CPU and always use the reference path:
Triton-interpreter timings are never reported as speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROVIDERS = ("fastmixer", "fastmixer+compile", "timm", "timm+compile", "cublas")
MODEL_MODES = ("inference", "training")
OP_MODES = ("forward", "forward+backward")
OPS = ("token_mix", "channel_mix")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Dense tensor-core peaks (TFLOP/s) by device-name substring, first match wins; fp32 is the tf32 rate.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0}),
    ("H200", {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
]


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Datasheet dense peak for a CUDA device name, or None if unknown (no % of peak is then reported)."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks[str(dtype).replace("torch.", "")]
    return None


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: what (level/target/mode), how (provider), at what size (batch, dtype, blocks)."""

    level: str  # "model" | "op"
    target: str  # variant ("b16") or op ("token_mix")
    mode: str  # MODEL_MODES or OP_MODES
    provider: str
    batch: int
    dtype: str  # key of DTYPES
    variant: str = "b16"  # shapes for op-level cases
    num_blocks: int | None = None  # depth override (CPU smoke runs); None = the variant's

    @property
    def label(self) -> str:
        depth = "" if self.num_blocks is None else f"[{self.num_blocks} blk]"
        what = f"{self.target}{depth}" if self.level == "model" else f"{self.target}@{self.variant}"
        return f"{what} {self.mode} b{self.batch} {self.dtype}"


# ------------------------------------------------------------------------------------------------ shapes and FLOPs
def variant_args(variant: str, num_blocks: int | None = None) -> dict[str, Any]:
    """timm MlpMixer arguments of a variant name ("b16", "mixer_l16_224", "MixerB16", ...)."""
    from fastmixer.registry import ARCHS, resolve_name

    name = variant if variant.startswith(("mixer", "fastmixer", "Mixer")) else f"mixer_{variant}_224"
    args = dict(ARCHS[resolve_name(name).split(".")[0]][1])
    if num_blocks is not None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        args["num_blocks"] = num_blocks
    return args


def _dims(variant: str, num_blocks: int | None = None) -> dict[str, int]:
    a = variant_args(variant, num_blocks)
    P, C = a["patch_size"], a["embed_dim"]
    S = (224 // P) ** 2
    return dict(P=P, C=C, S=S, Dt=C // 2, Dc=4 * C, L=a["num_blocks"], classes=1000)


def model_gemms(variant: str, batch: int, num_blocks: int | None = None) -> list[tuple[int, int, int]]:
    """The (M, N, K) GEMMs of one forward: stem (patchify), per block token fc1/fc2 and channel fc1/fc2, head."""
    d = _dims(variant, num_blocks)
    B, S, C = batch, d["S"], d["C"]
    block = [(B * C, d["Dt"], S), (B * C, S, d["Dt"]), (B * S, d["Dc"], C), (B * S, C, d["Dc"])]
    return [(B * S, C, 3 * d["P"] ** 2), *block * d["L"], (B, d["classes"], C)]


def op_gemms(op: str, variant: str, batch: int) -> list[tuple[int, int, int]]:
    """(M, N, K) of the two GEMMs of one fused op's forward."""
    d = _dims(variant)
    B, S, C = batch, d["S"], d["C"]
    if op == "token_mix":
        return [(B * C, d["Dt"], S), (B * C, S, d["Dt"])]
    if op == "channel_mix":
        return [(B * S, d["Dc"], C), (B * S, C, d["Dc"])]
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def with_backward(gemms: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Forward GEMMs plus, for each, the two of its backward: dA = dOut B^T (M, K, N) and dB = A^T dOut (K, N, M)."""
    return [g for m, n, k in gemms for g in ((m, n, k), (m, k, n), (k, n, m))]


def gemm_flops(gemms: list[tuple[int, int, int]]) -> int:
    return sum(2 * m * n * k for m, n, k in gemms)


def case_gemms(case: Case) -> list[tuple[int, int, int]]:
    if case.level == "model":
        g = model_gemms(case.target, case.batch, case.num_blocks)
    else:
        g = op_gemms(case.target, case.variant, case.batch)
    return with_backward(g) if case.mode in ("training", "forward+backward") else g


# ------------------------------------------------------------------------------------------------ building steps
def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-trivial weights (timm zero-inits the head and LayerNorm biases; a zero head makes logits trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gains
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def build_models(variant: str, num_blocks: int | None = None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(fastmixer model, timm MlpMixer) with the same random weights, fp32 on CPU."""
    from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

    from fastmixer.model import MlpMixer

    args = variant_args(variant, num_blocks)
    ours = _randomize_(MlpMixer(**args), seed)
    theirs = TimmMlpMixer(**args)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _backend_for(device: torch.device) -> str:
    # CPU always times the reference path: the Triton interpreter is a correctness tool, not a speed.
    return "triton" if device.type == "cuda" else "reference"


def _compile(fn: Any, provider: str, device: torch.device) -> Any:
    if device.type != "cuda":
        return torch.compile(fn)
    return torch.compile(fn, mode="reduce-overhead" if provider == "fastmixer+compile" else "max-autotune")


def _mark_step(device: torch.device) -> None:
    if device.type == "cuda" and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        torch.compiler.cudagraph_mark_step_begin()


def _gemm_step(gemms: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    # One (A [M, K], B [K, N], out [M, N]) per distinct shape; every GEMM of the list runs through torch.mm(out=).
    bufs: dict[tuple[int, int, int], tuple[Tensor, Tensor, Tensor]] = {}
    for m, n, k in gemms:
        if (m, n, k) not in bufs:
            bufs[(m, n, k)] = (
                torch.randn(m, k, dtype=dtype, device=device),
                torch.randn(k, n, dtype=dtype, device=device),
                torch.empty(m, n, dtype=dtype, device=device),
            )
    seq = [bufs[g] for g in gemms]

    def step() -> None:
        for a, b, out in seq:
            torch.mm(a, b, out=out)

    return step


def build_step(case: Case, device: torch.device) -> Callable[[], None]:
    """A zero-argument callable running one `case` step on `device` (inputs and models prepared up front)."""
    if case.provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {case.provider!r}")
    if case.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {case.dtype!r}")
    if case.batch < 1:
        raise ValueError(f"batch must be >= 1, got {case.batch}")
    dtype = DTYPES[case.dtype]
    if case.provider == "cublas":
        return _gemm_step(case_gemms(case), dtype, device)
    if case.level == "model":
        return _model_step(case, dtype, device)
    if case.level == "op":
        return _op_step(case, dtype, device)
    raise ValueError(f"level must be 'model' or 'op', got {case.level!r}")


def _model_step(case: Case, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    import fastmixer

    if case.mode not in MODEL_MODES:
        raise ValueError(f"model mode must be one of {MODEL_MODES}, got {case.mode!r}")
    ours, theirs = build_models(case.target, case.num_blocks)
    model = (ours if case.provider.startswith("fastmixer") else theirs).to(device=device, dtype=dtype)
    del ours, theirs
    training = case.mode == "training"
    model.train(training)
    fwd = _compile(model, case.provider, device) if case.provider.endswith("+compile") else model
    x = torch.randn(case.batch, 3, 224, 224, dtype=dtype, device=device)
    backend = _backend_for(device)
    if not training:

        def infer() -> None:
            _mark_step(device)
            with fastmixer.use_backend(backend), torch.no_grad():
                fwd(x)

        return infer
    target = torch.randint(0, 1000, (case.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, foreach=True)

    def train() -> None:
        _mark_step(device)
        with fastmixer.use_backend(backend):
            loss = F.cross_entropy(fwd(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return train


def _op_step(case: Case, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    import fastmixer
    from fastmixer import ops

    if case.mode not in OP_MODES:
        raise ValueError(f"op mode must be one of {OP_MODES}, got {case.mode!r}")
    if case.target not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {case.target!r}")
    from timm.models.mlp_mixer import MixerBlock

    d = _dims(case.variant)
    blk = _randomize_(MixerBlock(d["C"], d["S"], mlp_ratio=(0.5, 4.0))).to(device=device, dtype=dtype)
    token = case.target == "token_mix"
    norm, mlp = (blk.norm1, blk.mlp_tokens) if token else (blk.norm2, blk.mlp_channels)
    params = (norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    backward = case.mode == "forward+backward"
    x = torch.randn(case.batch, d["S"], d["C"], dtype=dtype, device=device, requires_grad=backward)
    blk.requires_grad_(backward)

    if case.provider.startswith("fastmixer"):
        fused = ops.token_mix if token else ops.channel_mix
        backend = _backend_for(device)

        def fn(x: Tensor) -> Tensor:
            with fastmixer.use_backend(backend):
                return fused(x, *params, eps=norm.eps)

    elif token:  # timm MixerBlock.forward, first half (drop_path is identity)

        def fn(x: Tensor) -> Tensor:
            return x + mlp(norm(x).transpose(1, 2)).transpose(1, 2)

    else:

        def fn(x: Tensor) -> Tensor:
            return x + mlp(norm(x))

    f = _compile(fn, case.provider, device) if case.provider.endswith("+compile") else fn
    if not backward:

        def forward() -> None:
            _mark_step(device)
            with torch.no_grad():
                f(x)

        return forward
    grad = torch.randn_like(x)
    leaves = (x, *params)

    def forward_backward() -> None:
        _mark_step(device)
        for t in leaves:
            t.grad = None
        f(x).backward(grad)

    return forward_backward


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """Wraps a step: each call runs it and records its time (CUDA events on CUDA, perf_counter on CPU) in `.ms`.
    The caller decides which calls are warm-up (`ms[warmup:]`)."""

    def __init__(self, fn: Callable[[], None], device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.ms: list[float] = []
        self._events: list[tuple[Any, Any]] = []

    def __call__(self) -> None:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.fn()
            end.record()
            end.synchronize()  # one call at a time: pytest-benchmark's wall clock then also sees finished work
            self.ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            self.fn()
            self.ms.append((time.perf_counter() - t0) * 1e3)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def metrics(case: Case, ms: Sequence[float], device: torch.device, peak_bytes: int | None) -> dict[str, Any]:
    """img/s, TFLOP/s, % of peak and peak memory from per-call times (ms) of `case`."""
    if not ms:
        raise ValueError("no timed calls")
    med = statistics.median(ms)
    flops = gemm_flops(case_gemms(case))
    tflops = flops / (med * 1e-3) / 1e12
    peak = peak_tflops(torch.cuda.get_device_name(device), DTYPES[case.dtype]) if device.type == "cuda" else None
    return {
        "ms": med,
        "ms_min": min(ms),
        "ms_mean": statistics.fmean(ms),
        "calls": len(ms),
        "img_s": case.batch / (med * 1e-3),
        "gflop_per_call": flops / 1e9,
        "tflops": tflops,
        "pct_peak": None if peak is None else 100.0 * tflops / peak,
        "peak_mem_mb": None if peak_bytes is None else peak_bytes / 2**20,
    }


def measure(case: Case, device: torch.device, warmup: int = 3, iters: int = 10) -> dict[str, Any]:
    """Build, warm up (compile/autotune happen here) and time `case`; the result dict holds the case and metrics."""
    _reset_memory(device)
    t0 = time.perf_counter()
    timer = Timer(build_step(case, device), device)
    for _ in range(warmup):
        timer()
    setup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(iters):
        timer()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    out = {**dataclasses.asdict(case), "label": case.label, "setup_s": setup_s}
    out.update(metrics(case, timer.ms[warmup:], device, peak))
    return out


def cpu_compile_allowed(case: Case, policy: str) -> bool:
    """On CPU inductor compiles take ~0.5-1 min per model graph on 2 cores: `policy` "none", "forward" (op-level
    forward only, the default), "inference" (+ model inference) or "all"."""
    if not case.provider.endswith("+compile"):
        return True
    if policy not in ("none", "forward", "inference", "all"):
        raise ValueError(f"cpu compile policy must be none|forward|inference|all, got {policy!r}")
    if policy == "all":
        return True
    if policy == "none":
        return False
    if case.level == "op":
        return case.mode == "forward"
    return policy == "inference" and case.mode == "inference"


# ------------------------------------------------------------------------------------------------ the suite
def environment(device: torch.device) -> dict[str, Any]:
    """Device name, versions, and run settings recorded with every report."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import timm

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        kind = "CUDA"
    else:
        name = f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
        kind = "CPU"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "device": name,
        "device_kind": kind,
        "torch": torch.__version__,
        "triton": triton_version,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "fastmixer_backend": _backend_for(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git_commit": commit or None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def make_cases(
    models: Sequence[str],
    ops_: Sequence[str],
    batches: Sequence[int],
    dtype: str,
    providers: Sequence[str] = PROVIDERS,
    model_modes: Sequence[str] = MODEL_MODES,
    op_modes: Sequence[str] = OP_MODES,
    num_blocks: int | None = None,
    op_variant: str = "b16",
) -> list[Case]:
    """Cases in priority order: per batch, models (inference, then training), then ops; providers innermost."""
    cases = []
    for b in batches:
        for m in models:
            for mode in model_modes:
                cases += [Case("model", m, mode, p, b, dtype, num_blocks=num_blocks) for p in providers]
        for op in ops_:
            for mode in op_modes:
                cases += [Case("op", op, mode, p, b, dtype, variant=op_variant) for p in providers]
    return cases


def run_suite(
    cases: Sequence[Case],
    device: torch.device,
    *,
    warmup: int = 3,
    iters: int = 10,
    cpu_compile: str = "forward",
    time_budget_s: float | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Measure each case; a failing case records its error and the run goes on. Cases not started within
    `time_budget_s` are recorded as skipped."""
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    results = []
    for case in cases:
        base = {**dataclasses.asdict(case), "label": case.label}
        if device.type == "cpu" and not cpu_compile_allowed(case, cpu_compile):
            res = {**base, "skipped": f"torch.compile on CPU not in policy {cpu_compile!r} (slow to compile)"}
        elif deadline is not None and time.monotonic() > deadline:
            res = {**base, "skipped": f"time budget of {time_budget_s:.0f} s used up"}
        else:
            try:
                res = measure(case, device, warmup=warmup, iters=iters)
            except Exception as e:  # one provider failing (OOM, compile error) must not lose the others' numbers
                res = {**base, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
            finally:
                if case.provider.endswith("+compile"):
                    torch._dynamo.reset()
                _reset_memory(device)
        results.append(res)
        log(_one_line(res))
        if on_result is not None:
            on_result(res)
    return results


def _one_line(r: dict[str, Any]) -> str:
    if "ms" in r:
        speed = f"{r['ms']:9.3f} ms {r['img_s']:10.1f} img/s {r['tflops']:7.2f} TF/s"
        return f"{r['label']:<42} {r['provider']:<18} {speed}"
    return f"{r['label']:<42} {r['provider']:<18} {r.get('error') or r.get('skipped')}"


# ------------------------------------------------------------------------------------------------ reports
def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: environment, one table per (case group), and counts if present."""
    env = report["env"]
    cpu = env["device_kind"] == "CPU"
    lines = [
        f"# fastmixer benchmark: {env['device']}" + (" (CPU: not GPU speed)" if cpu else ""),
        "",
        f"torch {env['torch']}, triton {env['triton']}, timm {env['timm']}, CUDA {env['cuda']}, "
        f"python {env['python']}; fastmixer backend: {env['fastmixer_backend']}; commit {env['git_commit']}; "
        f"{env['date']}.",
        "",
        f"Settings: {json.dumps(report.get('config', {}))}",
        "",
    ]
    if report["results"]:  # a --count-only report has no timings to explain
        lines += [
            "Times are medians of CUDA-event timings after warm-up (compile and autotune happen in warm-up)."
            if not cpu
            else "CPU timings (time.perf_counter) of the reference PyTorch path: a smoke run, not a GPU speed.",
            "TFLOP/s count the GEMM FLOPs (2 per multiply-add) of the step; % peak is against the datasheet dense "
            "peak; 'vs timm' is the speed-up over timm eager; 'of limit' is the share of the bare-cuBLAS-GEMMs speed "
            "reached.",
            "",
        ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault(r["label"], []).append(r)
    for label, rs in groups.items():
        timm_ms = next((r["ms"] for r in rs if r["provider"] == "timm" and "ms" in r), None)
        limit_ms = next((r["ms"] for r in rs if r["provider"] == "cublas" and "ms" in r), None)
        lines += [
            f"### {label}",
            "",
            "| provider | ms | img/s | TFLOP/s | % peak | peak MB | vs timm | of limit |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rs:
            if "ms" not in r:
                lines.append(f"| {r['provider']} | {r.get('error') or r.get('skipped')} |||||||")
                continue
            vs = f"{timm_ms / r['ms']:.2f}x" if timm_ms else ""
            lim = f"{100 * limit_ms / r['ms']:.0f}%" if limit_ms else ""
            lines.append(
                f"| {r['provider']} | {r['ms']:.3f} | {r['img_s']:.1f} | {r['tflops']:.2f} | "
                f"{_fmt(r['pct_peak'], '.1f')} | {_fmt(r['peak_mem_mb'], '.0f')} | {vs} | {lim} |"
            )
        lines.append("")
    for c in report.get("counts", []):
        from fastmixer.counting import format_counts

        lines += ["## Counts (no GPU needed)", "", format_counts(c), ""]
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Bar chart of img/s per case and provider to `path` (PNG); False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rs = [r for r in report["results"] if "ms" in r]
    labels = list(dict.fromkeys(r["label"] for r in rs))
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rs)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels) + 2), 4.5))
    width = 0.8 / max(1, len(providers))
    for i, p in enumerate(providers):
        xs, ys = [], []
        for j, label in enumerate(labels):
            r = next((r for r in rs if r["label"] == label and r["provider"] == p), None)
            if r is not None:
                xs.append(j + (i - (len(providers) - 1) / 2) * width)
                ys.append(r["img_s"])
        ax.bar(xs, ys, width, label=p)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("images / s (higher is better)")
    env = report["env"]
    kind = " - CPU, not GPU speed" if env["device_kind"] == "CPU" else ""
    ax.set_title(f"{env['device']}{kind}\ntorch {env['torch']}, triton {env['triton']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, stem: str, png: bool = True) -> dict[str, Path]:
    """Write `stem`.json, `stem`.md and (with matplotlib) `stem`.png into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(report) + "\n")
    if png:
        if plot(report, out / f"{stem}.png"):
            paths["png"] = out / f"{stem}.png"
        else:
            report.setdefault("notes", []).append("matplotlib not installed: no PNG chart")
            paths["md"].write_text(markdown(report) + "\n")
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="fastmixer vs timm eager vs torch.compile vs bare cuBLAS GEMMs (table, JSON, Markdown, PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="b16,l16", help="variants, comma-separated ('none' for no model level)")
    p.add_argument("--ops", default="token_mix,channel_mix", help="fused ops at --op-variant shapes ('none': skip)")
    p.add_argument("--op-variant", default="b16", help="variant whose shapes the op-level cases use")
    p.add_argument("--batch", default=None, help="batch sizes, comma-separated (default: 256 on CUDA, 1 on CPU)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--modes", default="inference,training,forward,forward+backward", help="modes to run")
    p.add_argument("--providers", default=",".join(PROVIDERS), help=f"subset of {','.join(PROVIDERS)}")
    p.add_argument("--blocks", type=int, default=None, help="depth override (default: full on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default: 20 on CUDA, 3 on CPU)")
    p.add_argument("--cpu-compile", default="forward", help="CPU torch.compile policy: none|forward|inference|all")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; later cases are recorded as skipped")
    p.add_argument("--count", action="store_true", help="also count launches / HBM bytes (no GPU needed)")
    p.add_argument("--count-only", action="store_true", help="only the counts, no timing")
    p.add_argument("--out", default="fastmixer-bench", help="folder for the JSON / Markdown / PNG report")
    p.add_argument("--name", default=None, help="file stem (default: <date>-<device>)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.set_defaults(func=main)


def _device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).replace("NVIDIA", "").strip().lower()
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-") or "cuda"


def main(args: argparse.Namespace) -> int:
    """`fastmixer bench`: run the suite (and/or counts), print a table, write JSON + Markdown (+ PNG)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {args.device!r}")
    cuda = device.type == "cuda"
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    batches = [int(b) for b in _csv(args.batch or ("256" if cuda else "1"))]
    modes = _csv(args.modes)
    providers = _csv(args.providers)
    bad = [p for p in providers if p not in PROVIDERS] + [m for m in modes if m not in MODEL_MODES + OP_MODES]
    if bad:
        raise ValueError(f"unknown provider/mode {bad}; providers: {PROVIDERS}, modes: {MODEL_MODES + OP_MODES}")
    models, ops_ = _csv(args.models), _csv(args.ops)
    num_blocks = args.blocks if args.blocks is not None else (None if cuda else 2)
    config = {
        "dtype": dtype,
        "batch": batches,
        "models": models,
        "ops": ops_,
        "op_variant": args.op_variant,
        "modes": modes,
        "providers": providers,
        "num_blocks": num_blocks,
        "warmup": args.warmup if args.warmup is not None else (5 if cuda else 1),
        "iters": args.iters if args.iters is not None else (20 if cuda else 3),
        "training_step": "forward + cross-entropy + backward + SGD(momentum, foreach) step; weights in --dtype",
    }
    report: dict[str, Any] = {"env": environment(device), "config": config, "results": [], "counts": []}
    stem = args.name or f"{datetime.date.today().isoformat()}-{_device_slug(device)}"
    if args.count or args.count_only:
        from fastmixer import counting

        for m in models or ["b16"]:
            kw = dict(batch=batches[0], dtype=DTYPES[dtype], num_blocks=args.blocks)
            try:
                c = counting.count_variant(m, **kw)
            except Exception as e:  # a backward that cannot be counted must not lose the forward counts
                note = f"{m}: backward not counted ({type(e).__name__}: {str(e).splitlines()[0]})"
                report.setdefault("notes", []).append(note)
                print(note)
                c = counting.count_variant(m, backward=False, **kw)
            report["counts"].append(c)
            print(counting.format_counts(c) + "\n")
    if not args.count_only:
        cases = make_cases(
            models,
            ops_,
            batches,
            dtype,
            providers,
            [m for m in modes if m in MODEL_MODES],
            [m for m in modes if m in OP_MODES],
            num_blocks=num_blocks,
            op_variant=args.op_variant,
        )
        if not cuda:
            print("CPU run: reference PyTorch path, timings are CPU smoke numbers, not GPU speed")

        def save(res: dict[str, Any]) -> None:
            report["results"].append(res)
            write_report(report, args.out, stem, png=False)  # incremental: a timeout still leaves the rows so far

        run_suite(
            cases,
            device,
            warmup=config["warmup"],
            iters=config["iters"],
            cpu_compile=args.cpu_compile,
            time_budget_s=args.time_budget,
            on_result=save,
        )
    paths = write_report(report, args.out, stem)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in report["results"] if "error" in r]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":  # pragma: no cover
    from fastmixer.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
