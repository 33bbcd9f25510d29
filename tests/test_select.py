"""Runtime selection (fastmixer/select.py) on CPU, with an injected timer.

No GPU here: the selection applies only to CUDA tensors on the auto backend, so the tests that go through the ops
`pretend_cuda` (auto resolves to the Triton path, which runs under the interpreter, and the selection applies), and a
fake timer returns chosen per-call times (it never measures). What is covered: the decision rule (clear wins both
ways, ties, noise, failed timings), the in-memory and disk caches (round trip, another device or version, corrupt
files, an unwritable folder, concurrent writers), FASTMIXER_SELECT, explicit backends, untimed calls (a dispatch mode,
torch.compile tracing), the op results on either choice, and the GPU-report entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import types
from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from torch.utils._python_dispatch import TorchDispatchMode

import fastmixer
from fastmixer import ops
from fastmixer import select as sel
from fastmixer.reference import channel_mix_ref, token_mix_ref

B, S, C = 2, 36, 40  # tiny, awkward: S not a power of two, C not a power of two
FAKE_DEVICE = "Fake GPU sm_90"


class FakeTimer:
    """Returns per-candidate samples (ms) from `times` (a dict, or a callable of the call count); counts its calls.
    run=True also calls every candidate once (to check what the candidates do)."""

    def __init__(self, times=None, run: bool = False):
        self.times, self.run, self.calls, self.outputs = times, run, 0, {}

    def __call__(self, candidates):
        self.calls += 1
        assert set(candidates) == {"fused", "reference"}
        if self.run:
            self.outputs = {name: fn() for name, fn in candidates.items()}
        if self.times is None:
            raise AssertionError("the timer was called but this test expects no timing")
        return self.times(self.calls) if callable(self.times) else self.times


FUSED_WINS = {"fused": [1.0] * 12, "reference": [2.0] * 12}
REFERENCE_WINS = {"fused": [2.0] * 12, "reference": [1.0] * 12}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh cache folder, no FASTMIXER_SELECT, a fake device name, a timer that must not be called, empty state."""
    monkeypatch.setenv("FASTMIXER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMIXER_SELECT", raising=False)
    monkeypatch.setattr(sel, "device_description", lambda device: FAKE_DEVICE)
    monkeypatch.setattr(sel, "timer", FakeTimer())
    sel.clear_selection_cache(disk=False)
    yield
    sel.clear_selection_cache(disk=False)


@pytest.fixture
def pretend_cuda(monkeypatch):
    """Make CPU tensors behave as CUDA ones do on the auto backend: the Triton path, with the selection applying."""
    real = ops.resolve_backend

    def resolve(x):
        return "triton" if ops.get_backend() == "auto" and x.dtype != torch.float64 else real(x)

    monkeypatch.setattr(ops, "resolve_backend", resolve)
    monkeypatch.setattr(sel, "applies", lambda x, backend: backend == "auto")


def use_timer(monkeypatch, times=None, run=False) -> FakeTimer:
    fake = FakeTimer(times, run)
    monkeypatch.setattr(sel, "timer", fake)
    return fake


def make_args(kind="token", batch=B, dtype=torch.float32, grad=False, scale=False, device=DEVICE):
    """(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale) at tiny shapes, on the
    device the Triton-path tests use (the GPU when there is one, else the CPU under the interpreter)."""
    g = torch.Generator().manual_seed(1)
    n, d = (S, 20) if kind == "token" else (C, 80)

    def rand(*shape, std=0.2):
        return (std * torch.randn(shape, generator=g)).to(device, dtype).requires_grad_(grad)

    x = rand(batch, S, C, std=1.0)
    ln_w = (1 + rand(C, std=0.1)).detach().requires_grad_(grad)
    tensors = (x, ln_w, rand(C), rand(d, n), rand(d), rand(n, d), rand(n))
    return (*tensors, torch.full((batch,), 2.0, device=device) if scale else None)


def choose(args, kind="token", act="gelu", mm_dtype=None, allow_tf32=False):
    return sel.choose(kind, args, eps=1e-6, act=act, mm_dtype=mm_dtype, allow_tf32=allow_tf32)


def disk_entries() -> dict:
    return json.loads(sel.cache_path().read_text())["entries"]


def key_of(args, kind="token") -> str:
    sig = sel.signature(kind, args, act="gelu", mm_dtype=None, allow_tf32=False)
    return f"{sig}|{sel.environment(args[0].device)}"


# ------------------------------------------------------------------------------------------------ the decision rule
@pytest.mark.parametrize(
    "fused, reference, choice, reason, persist",
    [
        ([1.0] * 12, [2.0] * 12, "fused", "faster", True),  # clear win, fused
        ([2.0] * 12, [1.0] * 12, "reference", "faster", True),  # clear win, reference
        ([1.00] * 12, [1.00] * 12, "fused", "tie", True),  # exact tie
        ([1.02] * 12, [1.00] * 12, "fused", "tie", True),  # reference 2% faster: within the 3% margin
        ([1.00] * 12, [1.02] * 12, "fused", "tie", True),  # fused 2% faster: a tie too, fused either way
        # reference median 25% lower, but its spread overlaps the fused one: noise, not evidence
        ([1.0, 1.0, 1.0, 0.7, 0.7, 1.0, 1.0, 1.0, 0.6, 1.0], [0.75] * 5 + [1.1] * 5, "fused", "noisy", False),
        # a noisy reference whose quartiles still clear the fused ones: a win
        (
            [2.0, 2.1, 1.9, 2.0, 2.3, 2.0, 1.9, 2.0],
            [1.0, 1.2, 0.9, 1.5, 1.0, 1.1, 1.0, 0.9],
            "reference",
            "faster",
            True,
        ),
        ([1.0, float("nan"), 0.0, -1.0], [1.0] * 12, "fused", "timing failed", False),  # < 3 valid samples
        ([], [], "fused", "timing failed", False),
    ],
)
def test_decide(fused, reference, choice, reason, persist):
    verdict = sel.decide({"fused": fused, "reference": reference})
    assert (verdict.choice, verdict.persist) == (choice, persist)
    assert reason in verdict.reason


def test_decide_medians_and_missing_candidate():
    verdict = sel.decide({"fused": [3.0, 1.0, 2.0], "reference": [9.0, 7.0, 8.0]})
    assert (verdict.fused_ms, verdict.reference_ms) == (2.0, 8.0)
    assert sel.decide({"fused": [1.0] * 5}).reason.startswith("timing failed")


# ------------------------------------------------------------------------------------------------ choose + caches
@pytest.mark.parametrize("times, backend", [(FUSED_WINS, "triton"), (REFERENCE_WINS, "reference")])
def test_clear_wins_and_memory_hit(monkeypatch, times, backend):
    fake = use_timer(monkeypatch, times)
    args = make_args()
    assert choose(args) == backend
    assert choose(args) == backend  # in-memory hit: the timer is not called again
    assert fake.calls == 1
    (record,) = sel.selection().values()
    assert record["source"] == "timed" and record["choice"] == ("fused" if backend == "triton" else "reference")


def test_each_key_is_timed_once(monkeypatch):
    fake = use_timer(monkeypatch, FUSED_WINS)
    variants = [
        make_args(),
        make_args(batch=3),  # shape
        make_args(dtype=torch.float16),  # dtype
        make_args(grad=True),  # training: forward + backward
        make_args(scale=True),  # branch_scale
    ]
    for args in variants:
        choose(args)
    choose(make_args(), act="gelu_tanh")
    choose(make_args(), allow_tf32=True)
    choose(make_args(), mm_dtype=torch.bfloat16)
    choose(make_args("channel"), kind="channel")
    assert fake.calls == 9 and len(sel.selection()) == 9
    for args in variants:  # all cached now
        choose(args)
    assert fake.calls == 9


def test_grad_mode_is_part_of_the_key(monkeypatch):
    fake = use_timer(monkeypatch, FUSED_WINS)
    args = make_args(grad=True)
    choose(args)
    with torch.no_grad():
        choose(args)  # the same tensors without grad: an inference key
    assert fake.calls == 2
    assert sorted(k.split("|grad=")[1][0] for k in sel.selection()) == ["0", "1"]


def test_tie_keeps_fused_and_is_cached(monkeypatch):
    use_timer(monkeypatch, {"fused": [1.01] * 12, "reference": [1.0] * 12})
    args = make_args()
    assert choose(args) == "triton"
    assert disk_entries()[key_of(args)]["choice"] == "fused"


def test_noisy_verdict_is_not_written_to_disk(monkeypatch):
    noisy = {"fused": [1.0, 1.0, 0.6, 1.0, 0.7, 1.0], "reference": [0.75, 0.75, 0.75, 1.1, 1.1, 1.1]}
    fake = use_timer(monkeypatch, noisy)
    args = make_args()
    assert choose(args) == "triton"
    assert choose(args) == "triton" and fake.calls == 1  # kept in memory for this process
    assert not sel.cache_path().exists()
    sel.clear_selection_cache(disk=False)  # a new process measures again
    choose(args)
    assert fake.calls == 2


def test_disk_round_trip(monkeypatch):
    fake = use_timer(monkeypatch, REFERENCE_WINS)
    args = make_args()
    assert choose(args) == "reference"
    data = json.loads(sel.cache_path().read_text())
    assert data["format"] == sel.FORMAT
    entry = data["entries"][key_of(args)]
    assert entry["choice"] == "reference" and entry["fused_ms"] == 2.0 and entry["reference_ms"] == 1.0
    assert f"device={FAKE_DEVICE}" in key_of(args) and f"torch={torch.__version__}" in key_of(args)
    assert not list(sel.cache_path().parent.glob("*.tmp"))  # the temporary was renamed, not left behind

    sel.clear_selection_cache(disk=False)  # a new process: memory empty, the file stays
    assert choose(args) == "reference"
    assert fake.calls == 1
    assert next(iter(sel.selection().values()))["source"] == "disk"


@pytest.mark.parametrize("foreign", ["device", "version"])
def test_cache_from_another_device_or_version_is_ignored(monkeypatch, foreign):
    args = make_args()
    key = key_of(args)
    other = (
        key.replace(f"device={FAKE_DEVICE}", "device=NVIDIA A100-SXM4-80GB sm_80")
        if foreign == "device"
        else key.replace(f"torch={torch.__version__}", "torch=2.0.0")
    )
    assert other != key
    path = sel.cache_path()
    path.parent.mkdir(parents=True)
    record = {"choice": "reference", "reason": "faster", "fused_ms": 2.0, "reference_ms": 1.0, "time": 1.0}
    path.write_text(json.dumps({"format": sel.FORMAT, "entries": {other: record}}))
    fake = use_timer(monkeypatch, FUSED_WINS)
    assert choose(args) == "triton"  # measured here, not taken from the other entry
    assert fake.calls == 1
    entries = disk_entries()
    assert entries[other] == record and entries[key]["choice"] == "fused"  # the other entry is kept for its owner


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"format": 99, "entries": {}}',
        b'{"format": 1, "entries": {"k": {"choice": "maybe"}}}',
        b"",
    ],
    ids=["json", "binary", "list", "format", "entry", "empty"],
)
def test_corrupt_cache_file_warns_once_and_is_rewritten(monkeypatch, content):
    path = sel.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    fake = use_timer(monkeypatch, FUSED_WINS)
    with pytest.warns(RuntimeWarning, match="selection cache") as record:
        assert choose(make_args()) == "triton"
        assert choose(make_args(batch=3)) == "triton"  # a second key: the file is read again, no second warning
    assert len([w for w in record if "selection cache" in str(w.message)]) == 1
    assert fake.calls == 2
    entries = disk_entries()  # rewritten as a valid file with both choices
    assert len(entries) == 2 and all(e["choice"] == "fused" for e in entries.values())


def test_unwritable_cache_folder_keeps_choices_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FASTMIXER_CACHE_DIR", str(blocker / "sub"))
    fake = use_timer(monkeypatch, REFERENCE_WINS)
    with pytest.warns(RuntimeWarning, match="cannot write the selection cache"):
        assert choose(make_args()) == "reference"
    assert choose(make_args()) == "reference" and fake.calls == 1


def test_concurrent_writers_lose_nothing():
    """Eight threads each persist 10 keys at once: every key lands and the file stays valid JSON (lock + rename)."""
    errors = []

    def write(t):
        try:
            for i in range(10):
                sel._persist(f"key-{t}-{i}", sel._record("fused", "faster", "timed", 1.0, 2.0))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(disk_entries()) == 80


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTMIXER_CACHE_DIR", str(tmp_path / "mine"))
    assert sel.cache_path() == tmp_path / "mine" / sel.CACHE_NAME
    monkeypatch.delenv("FASTMIXER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sel.cache_path() == tmp_path / "xdg" / "fastmixer" / sel.CACHE_NAME
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sel.cache_path() == tmp_path / "home" / ".cache" / "fastmixer" / sel.CACHE_NAME


def test_clear_selection_cache(monkeypatch):
    use_timer(monkeypatch, FUSED_WINS)
    choose(make_args())
    assert sel.cache_path().exists() and sel.selection()
    sel.clear_selection_cache()
    assert not sel.cache_path().exists() and not sel.selection()
    sel.clear_selection_cache()  # nothing to clear: no error


# ------------------------------------------------------------------------------------------------ FASTMIXER_SELECT
@pytest.mark.parametrize("value, backend", [("fused", "triton"), (" Reference ", "reference"), ("off", "triton")])
def test_select_override(monkeypatch, value, backend):
    monkeypatch.setenv("FASTMIXER_SELECT", value)  # the autouse timer fails if called
    assert choose(make_args()) == backend
    assert not sel.cache_path().exists()  # forced choices are never written
    records = sel.selection()
    if value == "off":  # the selection layer steps aside: nothing recorded
        assert records == {}
    else:
        (record,) = records.values()
        assert record["source"] == "forced" and record["choice"] == value.strip().lower()


@pytest.mark.parametrize("value", ["auto", "", "AUTO"])
def test_select_auto_spellings(monkeypatch, value):
    monkeypatch.setenv("FASTMIXER_SELECT", value)
    fake = use_timer(monkeypatch, REFERENCE_WINS)
    assert choose(make_args()) == "reference" and fake.calls == 1


def test_select_bad_value(monkeypatch):
    monkeypatch.setenv("FASTMIXER_SELECT", "fastest")
    with pytest.raises(ValueError, match=r"FASTMIXER_SELECT must be one of \('auto', 'fused', 'reference', 'off'\)"):
        choose(make_args())
    assert "invalid" in sel.describe_selection()[0]  # describing never raises


def test_forced_mode_ignores_the_cache(monkeypatch):
    use_timer(monkeypatch, REFERENCE_WINS)
    args = make_args()
    assert choose(args) == "reference"
    monkeypatch.setenv("FASTMIXER_SELECT", "fused")
    assert choose(args) == "triton"


# ------------------------------------------------------------------------------------------------ where it applies
def test_applies_only_to_cuda_on_the_auto_backend():
    cuda_like = types.SimpleNamespace(is_cuda=True)
    assert sel.applies(cuda_like, "auto")
    assert not sel.applies(cuda_like, "triton") and not sel.applies(cuda_like, "reference")
    assert not sel.applies(torch.zeros(1), "auto")


def test_cpu_never_times():
    """The real `applies`: CPU tensors on the auto backend run the reference path; the timer (fails if called) stays
    idle and nothing is recorded."""
    args = make_args(device="cpu")
    out = fastmixer.token_mix(*args[:7])
    torch.testing.assert_close(out, token_mix_ref(*args[:7], eps=1e-6), rtol=0, atol=0)
    assert sel.selection() == {}


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_explicit_backend_wins(monkeypatch, pretend_cuda, backend):
    monkeypatch.setenv("FASTMIXER_SELECT", "reference" if backend == "triton" else "fused")
    launched = []
    real_launch = ops._launch
    monkeypatch.setattr(ops, "_launch", lambda *a, **k: launched.append(a[0]) or real_launch(*a, **k))
    args = make_args()
    with fastmixer.use_backend(backend):
        fastmixer.token_mix(*args[:7])
    assert launched == (["token"] if backend == "triton" else [])
    assert sel.selection() == {}


class _Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_no_timing_under_a_dispatch_mode(monkeypatch):
    args = make_args()
    with _Passthrough():  # e.g. fastmixer's launch counter
        assert choose(args) == "triton"  # the untimed default; the timer (fails if called) stays idle
    (record,) = sel.selection().values()
    assert record["source"] == "default" and "TorchDispatchMode" in record["reason"]
    fake = use_timer(monkeypatch, REFERENCE_WINS)
    assert choose(args) == "reference" and fake.calls == 1  # the default was not cached: timed once possible


# ------------------------------------------------------------------------------------------------ through the ops
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_op_results_on_either_choice(monkeypatch, pretend_cuda, kind):
    """Reference chosen: the op is exactly the reference and no kernel launches; fused chosen: the kernel runs, and
    forward and gradients agree with the reference within the fp32 kernel tolerance."""
    launched = []
    real_launch = ops._launch
    monkeypatch.setattr(ops, "_launch", lambda *a, **k: launched.append(a[0]) or real_launch(*a, **k))
    op, ref = (fastmixer.token_mix, token_mix_ref) if kind == "token" else (fastmixer.channel_mix, channel_mix_ref)
    args = make_args(kind, grad=True, scale=True)
    results = {}
    for times, name in ((REFERENCE_WINS, "reference"), (FUSED_WINS, "fused")):
        sel.clear_selection_cache()
        use_timer(monkeypatch, times)
        launched.clear()
        out = op(*args[:7], branch_scale=args[7])
        grads = torch.autograd.grad(out.sum(), args[:7])
        results[name] = (out, grads)
        assert launched == ([] if name == "reference" else [kind])
    expected = ref(*args[:7], eps=1e-6, branch_scale=args[7])
    torch.testing.assert_close(results["reference"][0], expected, rtol=0, atol=0)
    torch.testing.assert_close(results["fused"][0], expected, rtol=1e-5, atol=1e-5)
    for g_fused, g_ref in zip(results["fused"][1], results["reference"][1]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-5)


def test_candidates_have_no_side_effects(monkeypatch, pretend_cuda):
    """The timer runs both candidates (forward + backward): no .grad appears on the caller's tensors, no random
    numbers are drawn, and both candidates compute the same gradients."""
    fake = use_timer(monkeypatch, FUSED_WINS, run=True)
    args = make_args("channel", grad=True)  # channel mixing: the cheaper of the two under the interpreter
    rng = torch.get_rng_state()
    out = fastmixer.channel_mix(*args[:7])
    assert fake.calls == 1
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(t.grad is None for t in args[:7])
    assert out.grad_fn is not None
    for g_fused, g_ref in zip(fake.outputs["fused"], fake.outputs["reference"]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-5)


def test_torch_compile_uses_the_cache_and_never_times(monkeypatch, pretend_cuda, inductor_cache):
    """Tracing an unknown key: no timing, the fused default (one warning). Once an eager call has timed the key, a
    fresh trace bakes the cached choice into the graph (here the reference path: plain aten, no fastmixer node)."""
    args = make_args()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(*tensors):
        return fastmixer.token_mix(*tensors)

    def fastmixer_nodes(gm):
        return [n for n in gm.graph.nodes if n.op == "call_function" and "fastmixer" in str(n.target)]

    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="while torch.compile traces"):
            compiled = torch.compile(f, backend=capture, fullgraph=True)(*args[:7])
        assert len(fastmixer_nodes(graphs[-1])) == 1  # the fused op (the autouse timer fails if called)
        torch.testing.assert_close(compiled, token_mix_ref(*args[:7], eps=1e-6), rtol=1e-5, atol=1e-5)
        assert next(iter(sel.selection().values()))["source"] == "default"

        fake = use_timer(monkeypatch, REFERENCE_WINS)
        assert fastmixer.token_mix(*args[:7]) is not None  # eager: timed once, reference kept
        assert fake.calls == 1
        torch._dynamo.reset()
        compiled = torch.compile(f, backend=capture, fullgraph=True)(*args[:7])
    assert fake.calls == 1  # tracing read the cache
    assert fastmixer_nodes(graphs[-1]) == []
    torch.testing.assert_close(compiled, token_mix_ref(*args[:7], eps=1e-6), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ reporting
def test_describe_selection(monkeypatch):
    lines = sel.describe_selection()
    assert "FASTMIXER_SELECT=auto" in lines[0] and str(sel.cache_path()) in lines[0]
    assert "no fused op" in lines[1]
    use_timer(monkeypatch, REFERENCE_WINS)
    choose(make_args(grad=True))
    line = sel.describe_selection()[1]
    assert re.search(r"token_mix x=2x36x40 float32 hidden=20 forward\+backward: reference \(faster, timed", line)
    assert "fused 2.000 ms, reference 1.000 ms" in line and FAKE_DEVICE in line


def test_public_names():
    assert fastmixer.selection is sel.selection
    assert fastmixer.describe_selection is sel.describe_selection
    assert fastmixer.clear_selection_cache is sel.clear_selection_cache
    assert fastmixer.tune_selection is sel.tune_selection


def test_gpu_report_step(monkeypatch, pretend_cuda, capsys):
    """The entry point bench/gpu_report.sh calls, at the smallest real model shape (S/16: S = 196, C = 512) on CPU
    with injected times; the script's flags are the ones the parser takes."""
    fake = use_timer(monkeypatch, REFERENCE_WINS)  # reference: plain aten on CPU, fast at these shapes
    assert sel.main(["--models", "s16", "--batch", "1", "--dtype", "fp32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert fake.calls == 4  # token and channel mix, forward and forward + backward
    body = [line for line in out if "_mix x=" in line]
    assert len(body) == 4 and all(": reference (faster, timed" in line for line in body)
    assert any("channel_mix x=1x196x512 float32 hidden=2048 forward+backward" in line for line in body)
    with pytest.raises(ValueError, match="model must be one of"):
        sel.measure(["x99"], 1, torch.float32, "cpu")

    script = (Path(__file__).parents[1] / "bench" / "gpu_report.sh").read_text()
    (line,) = [line for line in script.splitlines() if "-m fastmixer.select" in line]
    flags = shlex.split(line.split("-m fastmixer.select", 1)[1].split(">", 1)[0])
    monkeypatch.setattr(sel, "measure", lambda *a, **k: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sel.main(flags) == 0


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_timing_inside_activation_checkpointing(monkeypatch, pretend_cuda, use_reentrant):
    """The first call of a key can be timed inside torch.utils.checkpoint (fastmixer's set_grad_checkpointing): the
    candidates' saved tensors must not go through the checkpoint's hooks (non-reentrant checkpointing matches saved
    tensors by position between forward and recomputation), so gradients equal those of an uncheckpointed run."""
    from torch.utils.checkpoint import checkpoint

    args = make_args("channel", grad=True)
    fake = use_timer(monkeypatch, REFERENCE_WINS, run=True)  # runs both candidates, forward + backward

    def f(*tensors):
        return fastmixer.channel_mix(*tensors) * 2

    def grads(out):  # .backward(): reentrant checkpointing refuses autograd.grad
        for t in args[:7]:
            t.grad = None
        out.square().sum().backward()
        return [t.grad.clone() for t in args[:7]]

    checkpointed = grads(checkpoint(f, *args[:7], use_reentrant=use_reentrant))
    assert fake.calls == (2 if use_reentrant else 1)  # reentrant: forward without grad, recomputation with grad
    for g, e in zip(checkpointed, grads(f(*args[:7]))):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_no_timing_under_torch_func():
    """Inside vmap the tensors are functorch wrappers: the untimed default, never the timer (fails if called)."""
    args = make_args()
    batched_x = args[0].unsqueeze(0).expand(2, *args[0].shape)
    torch.func.vmap(lambda x: torch.tensor(0.0) if choose((x, *args[1:])) else None)(batched_x)
    (record,) = sel.selection().values()
    assert record["source"] == "default" and "torch.func" in record["reason"]


def test_out_of_memory_while_timing(monkeypatch):
    """Timing that runs out of GPU memory keeps the fused path for this process (one warning, timed no more), and
    writes nothing to disk."""

    def oom(calls):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    fake = use_timer(monkeypatch, oom)
    with pytest.warns(RuntimeWarning, match="ran out of GPU memory"):
        assert choose(make_args()) == "triton"
    assert choose(make_args()) == "triton" and fake.calls == 1
    assert not sel.cache_path().exists()
    (record,) = sel.selection().values()
    assert "out of memory" in record["reason"]


def test_tune_selection_before_compiling(monkeypatch, pretend_cuda):
    """tune_selection runs the model once (forward + backward with train=True): each op's key is timed once, whatever
    the number of blocks, no .grad is left on the parameters, and the lines name both ops."""
    model = fastmixer.MlpMixer(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40).to(DEVICE)
    fake = use_timer(monkeypatch, REFERENCE_WINS)
    lines = fastmixer.tune_selection(model, torch.randn(1, 3, 42, 42, device=DEVICE), train=True)
    assert fake.calls == 2  # token_mix and channel_mix, training keys, shared by both blocks
    assert all(p.grad is None for p in model.parameters())
    assert sum("forward+backward: reference" in line for line in lines) == 2
