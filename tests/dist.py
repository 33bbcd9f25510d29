"""The distributed tests' harness (tests/test_ddp.py, tests/test_fsdp.py; import as `import dist`): spawn the ranks,
the gloo group, each rank's results through files, and the single-process comparison."""

import contextlib
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from helpers import randomize_


def run_ranks(worker: Callable, out_dir, world: int, timeout_s: float, what: str) -> None:
    """Spawn `world` processes running worker(rank, port, str(out_dir)) on a free loopback port and wait for them;
    fail the test after timeout_s, and never leave a worker behind. Workers report through files in out_dir."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=(port, str(out_dir)), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} workers did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:  # only the workers started above
            if p.is_alive():
                p.terminate()
                p.join(10)


# The model and data: S = 36 tokens, C = 40 channels.
ARCH = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)


def model() -> torch.nn.Module:
    """The distributed tests' Mixer, in train mode; the same weights in every process (randomize_ is seeded)."""
    import fastmixer

    return randomize_(fastmixer.MlpMixer(**ARCH)).train()


@contextlib.contextmanager
def group(rank: int, port: int, world: int, timeout_s: float) -> Iterator[None]:
    """A distributed test's worker inside the gloo process group on 127.0.0.1:port (one intra-op thread); the group
    is destroyed on exit, whatever happened."""
    import torch.distributed as td

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    td.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        td.destroy_process_group()


def save_rank_results(
    rank: int, out_dir: str, backends: tuple[str, ...], world: int, global_batch: int, run: Callable
) -> None:
    """Per backend: run(x, y) on this rank's share of batch(global_batch); its result, or the traceback of its
    error, saved as out_dir/<backend>_rank<rank>.pt (load_rank_results reads them back)."""
    import fastmixer

    x, y = batch(global_batch)
    shard = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    for backend in backends:
        try:
            with fastmixer.use_backend(backend):
                result = run(x[shard], y[shard])
        except Exception:
            result = traceback.format_exc()
        torch.save(result, os.path.join(out_dir, f"{backend}_rank{rank}.pt"))


def load_rank_results(out_dir, backends: tuple[str, ...], world: int) -> dict[str, list]:
    """{backend: [rank 0 result, rank 1 result, ...]} as save_rank_results wrote them (results or traceback strings)."""
    return {
        b: [torch.load(Path(out_dir) / f"{b}_rank{r}.pt", weights_only=False) for r in range(world)] for b in backends
    }


def rank_results(results: dict[str, list], backend: str, what: str) -> list[dict]:
    """The ranks' results on `backend`, each checked to be a result (not a worker's traceback); skips a backend the
    workers did not run (triton on CPU without TRITON_INTERPRET=1)."""
    if backend not in results:
        pytest.skip(
            f"CPU {what} through the triton backend needs TRITON_INTERPRET=1 (conftest sets it only without CUDA)"
        )
    for r, result in enumerate(results[backend]):
        assert isinstance(result, dict), f"rank {r} failed on the {backend} backend:\n{result}"
    return results[backend]


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 3, 42, 42] and labels, the same in every process."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 42, 42, generator=g), torch.arange(n) % 5


def single_and_local(
    backend: str, global_batch: int, world: int, run: Callable, run_local: Callable | None = None
) -> tuple:
    """In this process on `backend`: run(model(), x, y) on the whole batch(global_batch) (what the ranks
    together must equal), and (run_local or run)(...) on one rank's share alone (what they must not: non-vacuity)."""
    import fastmixer

    x, y = batch(global_batch)
    share = global_batch // world
    with fastmixer.use_backend(backend):
        return run(model(), x, y), (run_local or run)(model(), x[:share], y[:share])


def assert_ranks_match(ranks: list[dict], single: dict[str, torch.Tensor], what: str = "") -> float:
    """Every rank's tensors equal the single process's, name by name (rtol 1e-5, atol 1e-6; `what` prefixes the
    failure message); -> rank 0's largest |difference|."""
    assert ranks[0].keys() == single.keys()
    worst = 0.0
    for name, want in single.items():
        for got in ranks:
            torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=lambda m, n=what + name: f"{n}: {m}")
        worst = max(worst, (ranks[0][name] - want).abs().max().item())
    return worst
