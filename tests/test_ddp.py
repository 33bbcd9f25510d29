"""DDP (torch.distributed, gloo, 2 CPU processes on 127.0.0.1): each rank takes half of the global batch; the averaged
gradients equal one process's gradients on the whole batch (fp32), on the reference and on the fused Triton path.

One spawn serves both backends (process start-up dominates the cost); every rank records its own result or error,
and the parent waits at most _TIMEOUT_S before it terminates the workers it started.
"""

import dist
import pytest
import torch
import torch.nn.functional as F
from conftest import INTERPRET
from helpers import one_thread
from torch.nn.parallel import DistributedDataParallel

WORLD = 2
GLOBAL_BATCH = 6  # 3 images per rank
# CPU tensors reach the Triton kernels only under the interpreter (conftest sets it on machines without CUDA).
BACKENDS = ("reference", "triton") if INTERPRET else ("reference",)
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
_TIMEOUT_S = 240


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over the batch, backward; gradients by parameter name (DDP's 'module.' prefix removed)."""
    F.cross_entropy(model(x), y).backward()
    inner = getattr(model, "module", model)
    return {n: p.grad.detach().clone() for n, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    with dist.group(rank, port, WORLD, 90):
        run = lambda x, y: _grads(DistributedDataParallel(dist.model()), x, y)
        dist.save_rank_results(rank, out_dir, BACKENDS, WORLD, GLOBAL_BATCH, run)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Spawn the 2 ranks once; {backend: [rank 0 result, rank 1 result]} (gradients dict or a traceback string)."""
    out_dir = tmp_path_factory.mktemp("ddp")
    dist.run_ranks(_worker, out_dir, WORLD, _TIMEOUT_S, "DDP")
    return dist.load_rank_results(out_dir, BACKENDS, WORLD)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ddp_gradients_equal_single_process(ddp_results, backend):
    ranks = dist.rank_results(ddp_results, backend, "DDP")
    single, local = dist.single_and_local(backend, GLOBAL_BATCH, WORLD, _grads)
    worst = dist.assert_ranks_match(ranks, single)
    # Not vacuous: one rank's local gradient (its half batch alone) differs from the global one.
    gap = max((local[n] - single[n]).abs().max().item() for n in single)
    assert gap > 1e-3
    print(
        f"\n[{backend}] DDP {WORLD} x {GLOBAL_BATCH // WORLD} vs 1 x {GLOBAL_BATCH}: max |grad diff| = {worst:.3g} "
        f"(local-only gradient differs by {gap:.3g})"
    )
