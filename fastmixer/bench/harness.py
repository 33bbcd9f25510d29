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
import re
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
    from fastmixer.registry import ARCHS, resolve_variant

    args = dict(ARCHS[resolve_variant(variant).split(".")[0]][1])
    if num_blocks is not None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        args["num_blocks"] = num_blocks
    return args


def _meta_model(variant: str, num_blocks: int | None = None) -> nn.Module:
    from fastmixer.model import MlpMixer

    with torch.device("meta"):  # shapes only: no memory, no init cost
        return MlpMixer(**variant_args(variant, num_blocks))


def _dims(variant: str, num_blocks: int | None = None) -> dict[str, int]:
    # read off the model itself (patch P, tokens S, channels C, MLP widths Dt / Dc, blocks L, classes)
    m = _meta_model(variant, num_blocks)
    blk = m.blocks[0]
    return dict(
        P=m.stem.proj.kernel_size[0],
        C=m.embed_dim,
        S=m.stem.num_patches,
        Dt=blk.mlp_tokens.fc1.out_features,
        Dc=blk.mlp_channels.fc1.out_features,
        L=len(m.blocks),
        classes=m.num_classes,
    )


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


def case_flops(case: Case) -> int:
    """GEMM FLOPs of one `case` step, from fastmixer.info.mixer_flops (2 per multiply-add; a backward does 2 GEMMs per
    forward GEMM, so forward + backward is 3x the forward): the whole model, or one block's op."""
    from fastmixer.info import mixer_flops

    if case.level == "model":
        per_image = mixer_flops(_meta_model(case.target, case.num_blocks))["total"]
    else:
        if case.target not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {case.target!r}")
        model = _meta_model(case.variant)
        per_image = mixer_flops(model)[case.target] // len(model.blocks)
    return per_image * case.batch * (3 if case.mode in ("training", "forward+backward") else 1)


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
    flops = case_flops(case)
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
def git_describe(cwd: Path) -> str | None:
    """The short commit of the checkout at `cwd`, with "+dirty" when tracked files outside bench/results differ from
    it (a clean id would name code that did not produce the results; regenerated results themselves do not count);
    None outside git."""

    def run(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd).stdout.strip()

    try:
        commit = run("rev-parse", "--short", "HEAD")
        outside_results = (":(top)", ":(top,exclude)bench/results")
        dirty = commit and run("status", "--porcelain", "--untracked-files=no", "--", *outside_results)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else (commit or None)


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
    commit = git_describe(Path(__file__).resolve().parent)
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
        "git_commit": commit,
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
    log: Callable[[str], None] = print,  # one progress line per case
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


def provider_label(provider: str, device_kind: str) -> str:
    """What a provider is on this device: the GEMM-only provider is cuBLAS (the practical limit) on CUDA, but on a
    CPU it is torch.mm on the CPU, no limit of anything."""
    if provider == "cublas":
        return "cuBLAS GEMMs only (limit)" if device_kind == "CUDA" else "torch.mm GEMMs only (CPU)"
    return provider


def _roofline_name(c: dict[str, Any]) -> str:
    # counting names its device "H100 SXM (model)"; the tables say MODEL once, where the modelled column is
    return re.sub(r"\s*\(model\)\s*$", "", c["roofline"]["name"], flags=re.IGNORECASE)


def counts_markdown(c: dict[str, Any]) -> str:
    """One count_variant result as a Markdown table: counted launches and bytes, then the modelled time (a MODEL)."""
    r, blocks = c["roofline"], f"{c['num_blocks']} block{'s' if c['num_blocks'] != 1 else ''}"
    lines = [
        f"Counts for {c['variant']} ({blocks}), batch {c['batch']}, {c['dtype']}. Launches, GB and "
        f"GFLOP are counted (deterministic, no GPU). 'modelled ms' is a roofline MODEL of an {_roofline_name(c)} "
        f"(max(flops / peak, bytes / bandwidth) + {r['launch_us']} us per launch), not a measurement.",
        "",
        "| provider | phase | launches | per block | GB moved | GFLOP | modelled ms (MODEL) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("fastmixer", "timm eager"):
        for phase, s in c[name].items():
            per_block = "" if s["launches_per_block"] is None else str(s["launches_per_block"])
            lines.append(
                f"| {name} | {phase} | {s['launches']} | {per_block} | {s['gbytes']:.2f} | {s['gflops']:.0f} | "
                f"{s['model_us'] / 1e3:.3f} |"
            )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: environment, one table per case group, the counts; each once."""
    env = report["env"]
    kind = env["device_kind"]
    cpu = kind == "CPU"
    timed = bool(report["results"])
    if timed:
        title = f"# fastmixer benchmark: {env['device']}" + (" (CPU timings: not GPU speed)" if cpu else "")
    else:
        title = "# fastmixer counts (no timing)"
    lines = [
        title,
        "",
        f"torch {env['torch']}, triton {env['triton']}, timm {env['timm']}, CUDA {env['cuda']}, "
        f"python {env['python']}; fastmixer backend: {env['fastmixer_backend']}; commit {env['git_commit']}; "
        f"{env['date']}; run on {env['device']}.",
        "",
        f"Settings: {json.dumps(report.get('config', {}))}",
        "",
    ]
    if timed:
        limit = provider_label("cublas", kind)
        lines += [
            "Times are medians of CUDA-event timings after warm-up (compile and autotune happen in warm-up)."
            if not cpu
            else "CPU timings (time.perf_counter) of the reference PyTorch path (timm's own aten math): a smoke run, "
            "not a GPU speed.",
            "TFLOP/s count the GEMM FLOPs (2 per multiply-add) of the step; % peak is against the datasheet dense "
            f"peak; '{limit}' runs only the step's GEMMs"
            + (
                "; 'vs timm' is timm eager's time over this row's; 'of limit' is the share of the GEMMs' speed reached."
                if not cpu
                else " (on a CPU a reference, no limit). No 'vs timm' column: on a CPU fastmixer runs timm's own math, "
                "so a ratio of these few timings would be noise."
            ),
            "",
        ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault(r["label"], []).append(r)
    head = "| provider | ms | img/s | TFLOP/s | % peak | peak MB |" + ("" if cpu else " vs timm | of limit |")
    for label, rs in groups.items():
        timm_ms = next((r["ms"] for r in rs if r["provider"] == "timm" and "ms" in r), None)
        limit_ms = next((r["ms"] for r in rs if r["provider"] == "cublas" and "ms" in r), None)
        lines += [f"### {label}", "", head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
        for r in rs:
            name = provider_label(r["provider"], kind)
            if "ms" not in r:
                lines.append(
                    f"| {name} | {'error' if 'error' in r else 'skipped'}: {r.get('error') or r.get('skipped')} |"
                )
                continue
            row = (
                f"| {name} | {r['ms']:.3f} | {r['img_s']:.1f} | {r['tflops']:.2f} | {_fmt(r['pct_peak'], '.1f')} | "
                f"{_fmt(r['peak_mem_mb'], '.0f')} |"
            )
            if not cpu:
                row += f" {timm_ms / r['ms']:.2f}x |" if timm_ms else " |"
                row += f" {100 * limit_ms / r['ms']:.0f}% |" if limit_ms else " |"
            lines.append(row)
        lines.append("")
    if report.get("counts"):
        lines += ["## Counts (no GPU needed)", ""]
    for c in report.get("counts", []):
        lines += [counts_markdown(c), ""]
    if report.get("selection"):
        # fastmixer/select.py: which path (fused or reference) each fused op met in the run took, and why.
        lines += ["## Runtime selection", "", "```", *report["selection"], "```", ""]
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _bar_labels(ax: Any, bars: Any, texts: Sequence[str]) -> None:
    for b, t in zip(bars, texts):
        ax.annotate(
            t,
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=6,
            xytext=(0, 1),
            textcoords="offset points",
        )


def _timed_figure(plt: Any, report: dict[str, Any]) -> Any:
    env = report["env"]
    kind = env["device_kind"]
    results = report["results"]
    levels = [lv for lv in ("model", "op") if any(r["level"] == lv for r in results)]
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in results)]
    ncols = max(len({r["label"] for r in results if r["level"] == lv}) for lv in levels)
    fig, axes = plt.subplots(
        len(levels), 1, figsize=(max(7.0, 1.5 * ncols + 3), 3.6 * len(levels) + 1.2), squeeze=False
    )
    width = 0.8 / max(1, len(providers))
    colors = {p: f"C{i}" for i, p in enumerate(PROVIDERS)}
    missing: dict[str, set[str]] = {}
    for ax, level in zip(axes[:, 0], levels):
        rs = [r for r in results if r["level"] == level]
        labels = list(dict.fromkeys(r["label"] for r in rs))
        top = max((r["img_s"] for r in rs if "ms" in r), default=1.0)
        for i, p in enumerate(providers):
            xs, ys = [], []
            for j, label in enumerate(labels):
                r = next((r for r in rs if r["label"] == label and r["provider"] == p), None)
                x = j + (i - (len(providers) - 1) / 2) * width
                if r is not None and "ms" in r:
                    xs.append(x)
                    ys.append(r["img_s"])
                elif r is not None:  # skipped or failed: name it where its bar would be
                    what = "error" if "error" in r else "skipped"
                    ax.text(
                        x,
                        top * 0.02,
                        f"{provider_label(p, kind)}: {what}",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        color="0.4",
                    )
                    missing.setdefault(f"{provider_label(p, kind)} {what}", set()).add(
                        str(r.get("error") or r.get("skipped"))
                    )
            if xs:  # a provider with no bar in this panel gets no legend entry either
                bars = ax.bar(xs, ys, width, label=provider_label(p, kind), color=colors[p])
                _bar_labels(ax, bars, [f"{y:.3g}" for y in ys])
        ax.set_xticks(range(len(labels)))
        # "b16[2 blk] inference b1 fp32" -> "b16[2 blk]" over "inference b1 fp32"
        ax.set_xticklabels([re.sub(r"^(\S+(?: blk\])?) ", "\\1\n", label) for label in labels], fontsize=7)
        ax.set_ylabel("images / s (higher is better)", fontsize=8)
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{level} level", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    cpu = " - CPU timings of the reference path (timm's math), not GPU speed" if kind == "CPU" else ""
    fig.suptitle(f"{env['device']}{cpu}\ntorch {env['torch']}, triton {env['triton']}, {env['date']}", fontsize=8)
    if missing:
        notes = "; ".join(f"{k}: {' / '.join(sorted(v))}" for k, v in missing.items())
        fig.text(0.01, 0.005, notes, fontsize=6, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    return fig


def _variant_name(c: dict[str, Any]) -> str:
    # "fastmixer_b16_224", 12 blocks -> "B/16 (12 blocks)"
    m = re.search(r"_([a-z])(\d+)_\d+$", c["variant"])
    return f"{m[1].upper()}/{m[2]} ({c['num_blocks']} blocks)" if m else c["variant"]


def _counts_figure(plt: Any, report: dict[str, Any]) -> Any:
    counts = report["counts"]
    groups = [(c, phase) for c in counts for phase in ("forward", "backward") if phase in c["fastmixer"]]
    names = [f"{_variant_name(c)}\n{phase}" for c, phase in groups]
    panels = [
        ("kernel launches (counted)", lambda s: s["launches"], "{:.0f}"),
        ("GB read + written (counted)", lambda s: s["gbytes"], "{:.1f}"),
        (f"ms per step: roofline MODEL of an {_roofline_name(counts[0])}", lambda s: s["model_us"] / 1e3, "{:.2f}"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 2.2 * len(groups) + 5), 4.2))
    width = 0.38
    for ax, (title, value, fmt) in zip(axes, panels):
        for k, (provider, color) in enumerate((("fastmixer", "C0"), ("timm eager", "C2"))):
            xs = [j + (k - 0.5) * width for j in range(len(groups))]
            ys = [value(c[provider][phase]) for c, phase in groups]
            bars = ax.bar(xs, ys, width, label=provider, color=color)
            texts = [fmt.format(y) for y in ys]
            if title.startswith("kernel"):  # forward launches per block, the number the design is about
                texts = [
                    t
                    + (
                        f"\n({c[provider][ph]['launches_per_block']}/blk)"
                        if c[provider][ph]["launches_per_block"]
                        else ""
                    )
                    for t, (c, ph) in zip(texts, groups)
                ]
            _bar_labels(ax, bars, texts)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.margins(y=0.18)
        ax.legend(fontsize=7)
    c0 = counts[0]
    fig.suptitle(
        f"fastmixer vs timm eager per step, batch {c0['batch']}, {c0['dtype']}: launches and bytes counted without a "
        f"GPU; the time panel is a MODEL, not a measurement\ntorch {report['env']['torch']}, "
        f"triton {report['env']['triton']}, {report['env']['date']}",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def figure(report: dict[str, Any]) -> Any:
    """The report's matplotlib figure: img/s per case, model level and op level in separate panels (each its own
    axis), skipped or failed providers named where their bar would be; or, for a count-only report, launches / GB /
    modelled ms of fastmixer vs timm eager. None without matplotlib or without anything to draw."""
    plt = _pyplot()
    if plt is None:
        return None
    if any("ms" in r for r in report["results"]):
        return _timed_figure(plt, report)
    if report.get("counts"):
        return _counts_figure(plt, report)
    return None


def plot(report: dict[str, Any], path: Path) -> bool:
    """`figure(report)` saved to `path` (PNG); False (nothing written) when there is no figure."""
    fig = figure(report)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike, stem: str, png: bool = True, json_file: bool = True
) -> dict[str, Path]:
    """Write `stem`.json, `stem`.md and (with matplotlib) `stem`.png into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{stem}.md"}
    if json_file:
        paths["json"] = out / f"{stem}.json"
        paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(report) + "\n")
    if png:
        if plot(report, out / f"{stem}.png"):
            paths["png"] = out / f"{stem}.png"
        elif _pyplot() is None:
            report.setdefault("notes", []).append("matplotlib not installed: no PNG chart")
            paths["md"].write_text(markdown(report) + "\n")
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]


def _device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).replace("NVIDIA", "").strip().lower()
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-") or "cuda"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _finish(report: dict[str, Any], out: str | None, stem: str, json_file: bool = True) -> None:
    """Print the report's tables once (stdout); write the files only where --out points."""
    print(markdown(report))
    if out:
        paths = write_report(report, out, stem, json_file=json_file)
        _progress("wrote " + ", ".join(str(p) for p in paths.values()))
    else:
        _progress("no files written (--out DIR writes the JSON, Markdown and PNG)")


def main(args: argparse.Namespace) -> int:
    """`fastmixer bench` (arguments in fastmixer.cli): run the suite and/or counts; tables to stdout once, progress
    to stderr, files only with --out."""
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        _finish(report, args.out, args.name or Path(args.from_json).stem, json_file=False)
        return 0
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
        from fastmixer.bench import counting

        for m in models or ["b16"]:
            _progress(f"counting {m}, batch {batches[0]}, {dtype} ...")
            kw = dict(batch=batches[0], dtype=DTYPES[dtype], num_blocks=args.blocks)
            try:
                c = counting.count_variant(m, **kw)
            except Exception as e:  # a backward that cannot be counted must not lose the forward counts
                note = f"{m}: backward not counted ({type(e).__name__}: {str(e).splitlines()[0]})"
                report.setdefault("notes", []).append(note)
                _progress(note)
                c = counting.count_variant(m, backward=False, **kw)
            report["counts"].append(c)
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
            _progress("CPU run: reference PyTorch path (timm's math); timings are CPU smoke numbers, not GPU speed")
        done = [0]

        def save(res: dict[str, Any]) -> None:
            report["results"].append(res)
            done[0] += 1
            if args.out:  # incremental: a timeout still leaves the rows so far
                write_report(report, args.out, stem, png=False)

        run_suite(
            cases,
            device,
            warmup=config["warmup"],
            iters=config["iters"],
            cpu_compile=args.cpu_compile,
            time_budget_s=args.time_budget,
            on_result=save,
            log=lambda line: _progress(f"[{done[0] + 1}/{len(cases)}] {line}"),
        )
        from fastmixer.select import describe_selection

        report["selection"] = describe_selection()  # what the timed fused ops ran: fused or reference
    _finish(report, args.out, stem)
    failed = [r for r in report["results"] if "error" in r]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":  # pragma: no cover
    from fastmixer.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
