"""Test setup. Without a CUDA device the Triton kernels run under the interpreter, which must be switched on before
triton is first imported: hence this block sits above every other import (torch itself does not import triton)."""

import os
import sys

# The interpreter runs tl.dot through numpy: multithreaded OpenBLAS on an oversubscribed 2-core machine made one
# 128x64x128 matmul ~70x slower. Must be set before numpy/torch load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tempfile

# Runtime selection (fastmixer/select.py): a per-session cache folder (never the user's ~/.cache/fastmixer), and on a
# GPU the fused path unless a test asks for the selection (tests/test_select.py sets FASTMIXER_SELECT itself): kernel
# tests, launch counts and saved-memory checks must see the kernels, not whatever the timing picked for a tiny shape.
os.environ["FASTMIXER_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastmixer-test-cache-")
os.environ.setdefault("FASTMIXER_SELECT", "fused")

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not HAS_CUDA:
    # Tiny shapes: intra-op threads cost more than they give (30 interpreted training steps: 31 s -> 1 s on 2 cores).
    torch.set_num_threads(1)

import pytest  # noqa: E402

import fastmixer  # noqa: E402

# Device the Triton-path tests run on: the GPU when there is one, else the CPU under the interpreter.
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def triton_backend():
    """Force the fused Triton path (interpreted on CPU)."""
    with fastmixer.use_backend("triton"):
        yield


@pytest.fixture
def reference_backend():
    with fastmixer.use_backend("reference"):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    """A fresh inductor cache: a stale one can keep an old fake kernel's strides."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
