"""`pytest bench/`: fastmixer vs timm eager vs torch.compile vs bare cuBLAS GEMMs, through fastmixer.bench.harness.

On CUDA: real sizes (batch FASTMIXER_BENCH_BATCH, default 256; bf16), CUDA-event timings after warm-up recorded in each
benchmark's extra_info (img/s, TFLOP/s, % of peak, peak memory). On CPU: a smoke run of the same suite at batch 1 on the
reference path (never the Triton interpreter), 2 blocks per model, few rounds, compile only where cheap.
Save a JSON with `pytest bench/ --benchmark-json=FILE`.
"""

import os

import pytest
import torch

from fastmixer.bench import harness

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = int(os.environ.get("FASTMIXER_BENCH_BATCH", "256" if CUDA else "1"))
DTYPE = os.environ.get("FASTMIXER_BENCH_DTYPE", "bf16" if CUDA else "fp32")
BLOCKS = None if CUDA else int(os.environ.get("FASTMIXER_BENCH_CPU_BLOCKS", "2"))
CPU_COMPILE = os.environ.get("FASTMIXER_BENCH_CPU_COMPILE", "forward")  # none | forward | inference | all
WARMUP, ROUNDS = (5, 20) if CUDA else (1, 2)


@pytest.fixture(autouse=True)
def _fresh_inductor_cache(tmp_path_factory, monkeypatch):
    # a stale compile cache can hold an old fake kernel's strides (DESIGN.md); one fresh folder per session
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))
    yield


def run_case(benchmark, case: harness.Case) -> None:
    """Time `case` with pytest-benchmark (each round synchronised) and attach the harness's metrics."""
    if DEVICE.type == "cpu" and not harness.cpu_compile_allowed(case, CPU_COMPILE):
        pytest.skip(f"torch.compile on CPU is slow (~0.5-1 min per graph); FASTMIXER_BENCH_CPU_COMPILE={CPU_COMPILE}")
    timer = harness.Timer(harness.build_step(case, DEVICE), DEVICE)
    if CUDA:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    try:
        benchmark.pedantic(timer, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    finally:
        if case.provider.endswith("+compile"):
            torch._dynamo.reset()
    peak = torch.cuda.max_memory_allocated(DEVICE) if CUDA else None
    m = harness.metrics(case, timer.ms[WARMUP:], DEVICE, peak)
    benchmark.extra_info.update({**m, "label": case.label, "device": harness.environment(DEVICE)["device"]})
    assert len(timer.ms) == WARMUP + ROUNDS and m["img_s"] > 0
