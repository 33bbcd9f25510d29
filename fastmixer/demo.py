"""`fastmixer demo` (what `make demo` runs): Mixer-B/16 next to timm's, with no claim the numbers do not support.

1. logits: fastmixer's B/16 against timm's with the same weights, fp32.
2. CPU only: the fused Triton kernels run under the interpreter on the first B/16 block(s), in a child process
   (TRITON_INTERPRET must be set before triton is imported), printing progress as it goes; the same run measures the
   activations each model keeps for backward (fastmixer saves each fused op's input and recomputes the rest).
3. counts (no GPU needed, fastmixer.bench.counting): kernel launches and compulsory bytes per forward / backward.
4. speed: interleaved rounds (fastmixer, timm, [timm+compile]; the order rotates every round), medians and spread of
   each, and a verdict on the per-round ratios by `speed_verdict`'s written rule. On CPU fastmixer runs its reference
   path, which is timm's own aten math (bit-identical logits), so any CPU difference is noise and the rule says so.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastmixer.bench import harness

MIN_ROUNDS = 5  # with fewer rounds no outcome passes the sign test below
MARGIN = 0.05  # a round counts for a side only when the ratio is beyond 1 +- 5 %
ALPHA = 0.05  # one-sided sign-test level
HEARTBEAT_S = 15.0  # progress line interval while the interpreted check runs


# ------------------------------------------------------------------------------------------------ the verdict
def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), inclusive method (exact for 1 value)."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    if len(v) == 1:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def _sign_test_p(wins: int, n: int) -> float:
    # P(at least `wins` of n fair coin flips land heads): the chance of so one-sided a result with no real difference
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def speed_verdict(ours_ms: Sequence[float], theirs_ms: Sequence[float], theirs: str = "timm") -> tuple[str, bool]:
    """Compare paired, interleaved timings; returns (one line, whether a difference is claimed).

    The rule, written down: per round r, ratio_r = theirs_ms[r] / ours_ms[r] (> 1: fastmixer faster); interleaving
    puts both sides in the same slow or fast phase of a noisy machine, so the ratios carry the comparison. A round
    counts as a win when ratio_r > 1 + MARGIN, as a loss when ratio_r < 1 - MARGIN, else as a tie (which counts
    against any claim). fastmixer is called faster only when the wins pass a one-sided sign test at ALPHA over all
    rounds (P(>= wins of n | no difference) <= ALPHA: all 5 of 5 rounds, 9 of 10, 15 of 20), and slower only when the
    losses do. Anything else prints as no difference the spread supports.
    """
    if len(ours_ms) != len(theirs_ms) or not ours_ms:
        raise ValueError(f"need paired timings, got {len(ours_ms)} and {len(theirs_ms)}")
    ratios = [t / o for o, t in zip(ours_ms, theirs_ms)]
    n = len(ratios)
    q1, med, q3 = quartiles(ratios)
    wins = sum(r > 1 + MARGIN for r in ratios)
    losses = sum(r < 1 - MARGIN for r in ratios)
    spread = (
        f"{theirs} / fastmixer time per round: median {med:.2f}x, quartiles {q1:.2f}x-{q3:.2f}x; "
        f"fastmixer >{MARGIN:.0%} faster in {wins}, >{MARGIN:.0%} slower in {losses} of {n} rounds"
    )
    p_faster, p_slower = _sign_test_p(wins, n), _sign_test_p(losses, n)
    if p_faster <= ALPHA:
        return f"{spread} -> fastmixer faster, {med:.2f}x (sign test p = {p_faster:.2g})", True
    if p_slower <= ALPHA:
        return f"{spread} -> fastmixer slower, {1 / med:.2f}x the time (sign test p = {p_slower:.2g})", True
    return f"{spread} -> no speed difference the spread supports", False


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, device: torch.device, calls: int = 1) -> dict:
    """Time each step once per round (mean of `calls` calls), rotating the order every round: A B, B A, A B, ...
    (three steps: A B C, B C A, C A B). Returns {name: [ms per round]}."""
    names = list(steps)
    timers = {n: harness.Timer(fn, device) for n, fn in steps.items()}
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            before = len(timers[n].ms)
            for _ in range(calls):
                timers[n]()
            out[n].append(statistics.fmean(timers[n].ms[before:]))
    return out


# ------------------------------------------------------------------------------------------------ parts
def logits_vs_timm(checkpoint: str | None, device: torch.device, batch: int = 2) -> tuple[float, float, Any, Any]:
    """(max |fastmixer - timm| logit difference, max |logit|, fastmixer model, timm model): Mixer-B/16, fp32."""
    import fastmixer

    ours, theirs = harness.build_models("b16")
    if checkpoint is not None:
        ours = fastmixer.create_model("mixer_b16_224", checkpoint_path=checkpoint)
        theirs.load_state_dict(ours.state_dict(), strict=True)
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        a, b = ours(x), theirs(x)  # [batch, 1000] fp32 logits each
    return (a - b).abs().max().item(), b.abs().max().item(), ours, theirs


def interpreted_check(num_blocks: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The fused Triton kernels on the first `num_blocks` blocks of B/16 (batch 1, fp32, CPU) against timm.

    Returns {"err": max |logit difference|, "scale": max |logit|, "ours_saved" / "timm_saved": activation bytes each
    forward keeps for backward}. Needs TRITON_INTERPRET=1 set before triton is imported: run it in a fresh process.
    progress: called with a line as each block starts and ends.
    """
    import fastmixer
    from fastmixer.bench.memory import saved_bytes

    say = progress or (lambda line: None)
    ours, theirs = harness.build_models("b16", num_blocks=num_blocks)
    ours.eval(), theirs.eval()
    n = len(ours.blocks)
    for i, blk in enumerate(ours.blocks):
        blk.register_forward_pre_hook(lambda *_, i=i: say(f"block {i + 1}/{n} running"))
        blk.register_forward_hook(lambda *_, i=i: say(f"block {i + 1}/{n} done"))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    outs: dict[str, torch.Tensor] = {}

    def run_ours(x: torch.Tensor) -> None:
        with fastmixer.use_backend("triton"):
            outs["ours"] = ours(x).detach()  # [1, 1000]

    def run_timm(x: torch.Tensor) -> None:
        outs["timm"] = theirs(x).detach()

    # with grad enabled, so each forward keeps what its backward would need; the backward itself never runs
    ours_saved = saved_bytes(run_ours, x, params=list(ours.parameters()))
    timm_saved = saved_bytes(run_timm, x, params=list(theirs.parameters()))
    a, b = outs["ours"], outs["timm"]
    return {
        "err": (a - b).abs().max().item(),
        "scale": b.abs().max().item(),
        "ours_saved": float(ours_saved),
        "timm_saved": float(timm_saved),
    }


def _child_main(num_blocks: int) -> None:  # python -c entry of the interpreted check (progress lines, then RESULT)
    res = interpreted_check(num_blocks, progress=lambda line: print(f"PROGRESS {line}", flush=True))
    print("RESULT " + " ".join(f"{k}={v!r}" for k, v in res.items()), flush=True)


def relay_child(
    cmd: list[str], env: dict[str, str] | None, heartbeat_s: float = HEARTBEAT_S, out: Callable[[str], None] = print
) -> tuple[int, dict[str, float] | None, str]:
    """Run `cmd`, echoing its "PROGRESS <line>" lines as they come and, when it is silent for heartbeat_s, a line
    saying what it is still doing and for how long. Returns (exit status, its "RESULT k=v ..." as a dict, stderr)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def drain_stderr() -> None:  # read concurrently: a full stderr pipe would stall the child
        assert child.stderr is not None
        err.append(child.stderr.read())

    threading.Thread(target=pump, daemon=True).start()
    stderr_reader = threading.Thread(target=drain_stderr, daemon=True)
    stderr_reader.start()
    result: dict[str, float] | None = None
    last = "starting (imports, building the model)"
    while True:
        try:
            line = lines.get(timeout=heartbeat_s)
        except queue.Empty:
            out(f"   ... {last} [{time.perf_counter() - t0:.0f} s]")
            continue
        if line is None:
            break
        if line.startswith("PROGRESS "):
            last = line[len("PROGRESS ") :]
            out(f"   {last} [{time.perf_counter() - t0:.0f} s]")
        elif line.startswith("RESULT "):
            result = {k: float(v) for k, v in (kv.split("=", 1) for kv in line[len("RESULT ") :].split())}
    child.wait()
    stderr_reader.join()
    return child.returncode, result, "".join(err)


def _run_interpreted_check(num_blocks: int) -> tuple[bool, dict[str, float] | None]:
    """interpreted_check in a child process (TRITON_INTERPRET=1 before triton loads), with progress as it runs."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    code = f"from fastmixer.demo import _child_main; _child_main({num_blocks})"
    print(
        f"2. fused Triton kernels, interpreted on CPU (B/16 shapes, first {num_blocks} of 12 blocks, batch 1, fp32; "
        "a minute or more per block on 2 cores):",
        flush=True,
    )
    t0 = time.perf_counter()
    rc, result, stderr = relay_child([sys.executable, "-c", code], env, out=lambda line: print(line, flush=True))
    if rc != 0 or result is None:
        print(f"   FAILED (exit status {rc})\n{stderr[-2000:]}")
        return False, None
    ok = result["err"] <= 1e-4 * max(1.0, result["scale"])
    print(
        f"   max |logit diff| vs timm = {result['err']:.3g} (logits up to {result['scale']:.3g}) -> "
        f"{'OK' if ok else 'FAIL'} [{time.perf_counter() - t0:.0f} s]"
    )
    return ok, result


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MB"


def _print_counts(saved: dict[str, float] | None, saved_note: str) -> None:
    from fastmixer.bench import counting

    batch, dtype = 64, torch.bfloat16
    c = counting.count_variant("b16", batch=batch, dtype=dtype, backward=True)
    f, t = c["fastmixer"], c["timm eager"]
    rows = [
        ("kernel launches per forward", f"{f['forward']['launches']}", f"{t['forward']['launches']}"),
        (
            "  of which per block",
            f"{f['forward']['launches_per_block']}",
            f"{t['forward']['launches_per_block']}",
        ),
        ("kernel launches per backward", f"{f['backward']['launches']}", f"{t['backward']['launches']}"),
        ("GB read+written per forward", f"{f['forward']['gbytes']:.2f}", f"{t['forward']['gbytes']:.2f}"),
        ("GB read+written per backward", f"{f['backward']['gbytes']:.2f}", f"{t['backward']['gbytes']:.2f}"),
    ]
    if saved is not None:
        rows.append((saved_note, _mb(saved["ours_saved"]), _mb(saved["timm_saved"])))
    print(
        f"\n3. what the fused path changes (counted, not timed: B/16, batch {batch}, bf16, what a GPU would be asked "
        "to do; bytes = each kernel's tensors read or written once):"
    )
    print("| | fastmixer | timm eager |\n|---|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    if saved is not None and saved["timm_saved"] > 0:
        print(f"activations kept for backward: fastmixer {saved['ours_saved'] / saved['timm_saved']:.3f}x timm's")


def _cuda_saved(ours: Any, theirs: Any, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    from fastmixer.bench.memory import saved_bytes

    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    ours_saved = saved_bytes(lambda t: ours(t).detach(), x, params=list(ours.parameters()))
    timm_saved = saved_bytes(lambda t: theirs(t).detach(), x, params=list(theirs.parameters()))
    return {"ours_saved": float(ours_saved), "timm_saved": float(timm_saved)}


def _speed(ours: Any, theirs: Any, device: torch.device, batch: int, rounds: int) -> None:
    import fastmixer

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    models = {"fastmixer": ours.to(dtype=dtype), "timm": theirs.to(dtype=dtype)}
    if cuda:
        models["timm+compile"] = harness._compile(theirs, "timm+compile", device)
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    backend = "triton" if cuda else "reference"

    def step(model: Any) -> Callable[[], None]:
        def run() -> None:
            with fastmixer.use_backend(backend), torch.no_grad():
                model(x)

        return run

    steps = {name: step(m) for name, m in models.items()}
    calls = 5 if cuda else 1
    print(
        f"\n4. speed, Mixer-B/16 inference, batch {batch}, {'bf16' if cuda else 'fp32'}, "
        f"{'GPU' if cuda else 'CPU'}: {rounds} interleaved rounds (order rotating), "
        f"{'mean of 5 calls per round, CUDA events' if cuda else 'one call per round, wall clock'}, after warm-up"
    )
    if not cuda:
        print(
            "   On CPU fastmixer runs its reference path, timm's math in plain aten ops (the logits above are "
            "identical): whatever the times show says nothing about the fused kernels, which need a CUDA GPU."
        )
    for fn in steps.values():  # warm-up (compilation and autotuning happen here)
        for _ in range(3 if cuda else 1):
            fn()
    if cuda:
        torch.cuda.synchronize()
    ms = interleaved(steps, rounds, device, calls=calls)
    print("| provider | median ms | quartiles ms | min-max ms | img/s (median) |\n|---|---:|---:|---:|---:|")
    for name, v in ms.items():
        q1, med, q3 = quartiles(v)
        label = name if cuda else f"{name} (CPU)"
        print(f"| {label} | {med:.1f} | {q1:.1f}-{q3:.1f} | {min(v):.1f}-{max(v):.1f} | {batch / (med * 1e-3):.1f} |")
    for other in [n for n in ms if n != "fastmixer"]:
        line, claimed = speed_verdict(ms["fastmixer"], ms[other], theirs=other)
        print(line)
        if claimed and not cuda:
            print(
                "   (a CPU fact about the reference path, which computes timm's math with differently arranged aten "
                "ops; it says nothing about the fused GPU kernels)"
            )


# ------------------------------------------------------------------------------------------------ the command
def main(args: argparse.Namespace) -> int:
    """`fastmixer demo` (arguments in fastmixer.cli)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")
    for opt in ("batch", "rounds"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise ValueError(f"--{opt} must be >= 1, got {getattr(args, opt)}")
    if args.interpreted_blocks < 0 or args.interpreted_blocks > 12:
        raise ValueError(f"--interpreted-blocks must be 0..12, got {args.interpreted_blocks}")
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    env = harness.environment(device)
    print(f"fastmixer demo on {env['device']} (torch {env['torch']}, triton {env['triton']}, timm {env['timm']})")
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights"
    if cuda:
        print(f"Mixer-B/16, {weights}: fastmixer runs its fused Triton kernels.")
    else:
        print(
            f"Mixer-B/16, {weights}. No CUDA GPU: fastmixer runs its reference path, which is timm's own PyTorch math "
            "(the fused Triton kernels need a CUDA GPU; below they run under the Triton interpreter as a check)."
        )
    err, scale, ours, theirs = logits_vs_timm(args.checkpoint, device)
    # CPU: the reference path is timm's own aten math (bit-identical); CUDA: fused fp32 kernels vs cuBLAS.
    tol = 1e-3 * max(1.0, scale) if cuda else 1e-5
    ok = err <= tol
    verdict = "OK" if ok else f"FAIL (tolerance {tol:.1g})"
    print(f"\n1. logits vs timm (fp32, batch 2): max |diff| = {err:.3g} (logits up to {scale:.3g}) -> {verdict}")

    saved, note = None, ""
    if cuda:
        batch = args.batch or 64
        saved = _cuda_saved(ours.to(torch.bfloat16), theirs.to(torch.bfloat16), batch, torch.bfloat16, device)
        note = f"activations kept for backward (B/16, batch {batch}, bf16)"
    elif args.interpreted_blocks > 0:
        good, saved = _run_interpreted_check(args.interpreted_blocks)
        ok = ok and good
        note = f"activations kept for backward (B/16 cut to {args.interpreted_blocks} block(s), batch 1, fp32)"
    else:
        print("2. interpreted Triton check skipped (--interpreted-blocks 0): no saved-activation figure either")
    _print_counts(saved, note)
    _speed(ours, theirs, device, args.batch or (64 if cuda else 1), args.rounds or (20 if cuda else MIN_ROUNDS))
    print(f"\n(done in {time.perf_counter() - t0:.0f} s; `fastmixer bench` runs the full comparison)")
    return 0 if ok else 1
