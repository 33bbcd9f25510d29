"""Backend selection scope: `use_backend` is per thread / asyncio task (contextvars) and never changes the process
default; `set_backend` (and FASTMIXER_BACKEND) set the process-wide default that every thread sees."""

import asyncio
import threading

import pytest
import torch
from conftest import DEVICE

import fastmixer
from fastmixer import ops


@pytest.fixture(autouse=True)
def _restore_default():
    default = ops._default_backend
    yield
    fastmixer.set_backend(default)


def test_two_threads_overlapping_use_backend():
    """Thread A holds use_backend("reference") while thread B holds use_backend("triton"); each sees its own, a third
    thread and the main thread see the process default throughout, and after both exit nothing is left behind (with a
    process-global switch, A's exit would restore the wrong value under B, or B's would leave A's behind)."""
    fastmixer.set_backend("auto")
    both_inside = threading.Barrier(3)
    a_left = threading.Event()
    seen: dict[str, list[str]] = {"a": [], "b": [], "bystander": []}
    errors: list[BaseException] = []

    def worker(key: str, backend: str) -> None:
        try:
            with fastmixer.use_backend(backend):
                seen[key].append(fastmixer.get_backend())
                both_inside.wait(timeout=30)  # A and B are both inside their blocks here
                if key == "a":
                    seen[key].append(fastmixer.get_backend())
                else:
                    assert a_left.wait(timeout=30)  # B is still inside after A has exited
                    seen[key].append(fastmixer.get_backend())
                    seen[key].append(ops.resolve_backend(torch.zeros(1, device=DEVICE)))
            seen[key].append(fastmixer.get_backend())
            if key == "a":
                a_left.set()
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)
            both_inside.abort()

    def bystander() -> None:
        try:
            both_inside.wait(timeout=30)
            seen["bystander"].append(fastmixer.get_backend())
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=("a", "reference")),
        threading.Thread(target=worker, args=("b", "triton")),
        threading.Thread(target=bystander),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert seen["a"] == ["reference", "reference", "auto"]
    assert seen["b"] == ["triton", "triton", "triton", "auto"]  # resolve_backend under "triton" with the interpreter
    assert seen["bystander"] == ["auto"]
    assert fastmixer.get_backend() == "auto"


def test_use_backend_leaves_the_process_default_alone():
    fastmixer.set_backend("reference")
    with fastmixer.use_backend("triton"):
        assert fastmixer.get_backend() == "triton"
        assert ops._default_backend == "reference"
        with fastmixer.use_backend("auto"):  # nests
            assert fastmixer.get_backend() == "auto"
        assert fastmixer.get_backend() == "triton"
    assert fastmixer.get_backend() == "reference"


def test_set_backend_is_process_wide():
    """set_backend in one thread changes the default every other thread sees; inside a use_backend block the block's
    choice still wins, and the new default applies after it."""
    fastmixer.set_backend("auto")
    with fastmixer.use_backend("triton"):
        t = threading.Thread(target=fastmixer.set_backend, args=("reference",))
        t.start()
        t.join()
        assert fastmixer.get_backend() == "triton"
    assert fastmixer.get_backend() == "reference"
    seen = []
    t = threading.Thread(target=lambda: seen.append(fastmixer.get_backend()))
    t.start()
    t.join()
    assert seen == ["reference"]


def test_asyncio_tasks_are_isolated():
    """Two tasks interleaving at an await, each inside its own use_backend: each sees its own backend."""
    fastmixer.set_backend("auto")

    async def task(backend: str, first: asyncio.Event, second: asyncio.Event) -> list[str]:
        with fastmixer.use_backend(backend):
            first.set()
            await second.wait()
            return [fastmixer.get_backend()]

    async def main() -> tuple[list[str], list[str]]:
        e1, e2 = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(task("reference", e1, e2), task("triton", e2, e1))

    assert list(asyncio.run(main())) == [["reference"], ["triton"]]
    assert fastmixer.get_backend() == "auto"


def test_bad_names_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastmixer.set_backend("cuda")
    with pytest.raises(ValueError, match="backend must be one of"), fastmixer.use_backend("gpu"):
        pass
    assert fastmixer.get_backend() == ops._default_backend
