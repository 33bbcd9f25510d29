"""DDP (torch.distributed, gloo, 2 CPU processes on 127.0.0.1): each rank takes half of the global batch; the averaged
gradients equal one process's gradients on the whole batch (fp32), on the reference and on the fused Triton path.

One spawn serves both backends (process start-up dominates the cost); every rank records its own result or error,
and the parent waits at most _TIMEOUT_S before it terminates the workers it started.
"""

import os
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import INTERPRET
from helpers import randomize_, run_ranks
from torch.nn.parallel import DistributedDataParallel

import fastmixer

WORLD = 2
GLOBAL_BATCH = 6  # 3 images per rank
# CPU tensors reach the Triton kernels only under the interpreter (conftest sets it on machines without CUDA).
BACKENDS = ("reference", "triton") if INTERPRET else ("reference",)
_TIMEOUT_S = 240
_ARCH = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)  # S = 36, C = 40


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread (two spinning threads per process crawl on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model() -> torch.nn.Module:
    return randomize_(fastmixer.MlpMixer(**_ARCH)).train()  # randomize_ uses its own seeded generator


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(GLOBAL_BATCH, 3, 42, 42, generator=g), torch.arange(GLOBAL_BATCH) % 5


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over the batch, backward; gradients by parameter name (DDP's 'module.' prefix removed)."""
    F.cross_entropy(model(x), y).backward()
    inner = getattr(model, "module", model)
    return {n: p.grad.detach().clone() for n, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=90))
    try:
        x, y = _batch()
        shard = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        for backend in BACKENDS:
            try:
                with fastmixer.use_backend(backend):
                    result = _grads(DistributedDataParallel(_model()), x[shard], y[shard])
            except Exception:
                result = traceback.format_exc()
            torch.save(result, os.path.join(out_dir, f"{backend}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Spawn the 2 ranks once; {backend: [rank 0 result, rank 1 result]} (gradients dict or a traceback string)."""
    out_dir = tmp_path_factory.mktemp("ddp")
    run_ranks(_worker, out_dir, WORLD, _TIMEOUT_S, "DDP")
    return {b: [torch.load(out_dir / f"{b}_rank{r}.pt", weights_only=False) for r in range(WORLD)] for b in BACKENDS}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ddp_gradients_equal_single_process(ddp_results, backend):
    if backend not in BACKENDS:
        pytest.skip("CPU DDP through the triton backend needs TRITON_INTERPRET=1 (conftest sets it only without CUDA)")
    ranks = ddp_results[backend]
    for r, result in enumerate(ranks):
        assert isinstance(result, dict), f"rank {r} failed on the {backend} backend:\n{result}"
    x, y = _batch()
    with fastmixer.use_backend(backend):
        single = _grads(_model(), x, y)
    assert ranks[0].keys() == single.keys()
    worst = 0.0
    for name, g in single.items():
        for r in range(WORLD):
            torch.testing.assert_close(ranks[r][name], g, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        worst = max(worst, (ranks[0][name] - g).abs().max().item())
    # Not vacuous: one rank's local gradient (its half batch alone) differs from the global one.
    with fastmixer.use_backend(backend):
        local = _grads(_model(), x[: GLOBAL_BATCH // WORLD], y[: GLOBAL_BATCH // WORLD])
    gap = max((local[n] - single[n]).abs().max().item() for n in single)
    assert gap > 1e-3
    print(
        f"\n[{backend}] DDP {WORLD} x {GLOBAL_BATCH // WORLD} vs 1 x {GLOBAL_BATCH}: max |grad diff| = {worst:.3g} "
        f"(local-only gradient differs by {gap:.3g})"
    )
