"""`fastmixer demo` (what `make demo` runs): build Mixer-B/16, show its logits equal timm's, time it against timm.

On CUDA the fused Triton kernels run (bf16 timing, fp32 logit check). On CPU the reference PyTorch path runs (small
batch, few iterations, the speed table labelled CPU: not a GPU speed), and a child process also runs the fused Triton
kernels under the interpreter on the first blocks of B/16, so the kernels are checked against timm without a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import torch

from fastmixer import benchmark


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="Mixer-B/16: logits equal timm's, and a short speed table")
    p.add_argument("--checkpoint", default=None, help="timm / mmpretrain / JAX checkpoint (default: random weights)")
    p.add_argument("--batch", type=int, default=None, help="timing batch (default: 64 on CUDA, 2 on CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--interpreted-blocks",
        type=int,
        default=2,
        help="CPU only: B/16 blocks to run through the Triton interpreter against timm (0: skip)",
    )
    p.set_defaults(func=main)


def logits_vs_timm(checkpoint: str | None, device: torch.device, batch: int = 2) -> tuple[float, float]:
    """(max |fastmixer - timm| logit difference, max |logit|) for Mixer-B/16 in fp32 on `device`."""
    import fastmixer
    from fastmixer.model import MlpMixer

    ours, theirs = benchmark.build_models("b16")
    if checkpoint is not None:
        ours = fastmixer.create_model("mixer_b16_224", checkpoint_path=checkpoint)
        theirs.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(ours, MlpMixer)
    ours, theirs = ours.to(device).eval(), theirs.to(device).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        a, b = ours(x), theirs(x)  # [batch, 1000] fp32 logits each
    return (a - b).abs().max().item(), b.abs().max().item()


def interpreted_check(num_blocks: int = 2) -> tuple[float, float]:
    """(max |fastmixer Triton - timm| logit difference, max |logit|) for the first `num_blocks` blocks of B/16, batch 1,
    fp32, on CPU. Needs TRITON_INTERPRET=1 set before triton is imported: run it in a fresh process."""
    import fastmixer

    ours, theirs = benchmark.build_models("b16", num_blocks=num_blocks)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), fastmixer.use_backend("triton"):
        a = ours.eval()(x)
    with torch.no_grad():
        b = theirs.eval()(x)
    return (a - b).abs().max().item(), b.abs().max().item()


def _run_interpreted_check(num_blocks: int) -> bool:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1"}
    code = f"from fastmixer.demo import interpreted_check; print(*interpreted_check({num_blocks}))"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(f"fused Triton kernels (interpreted): FAILED\n{out.stderr[-2000:]}")
        return False
    err, scale = map(float, out.stdout.split()[-2:])
    ok = err <= 1e-4 * max(1.0, scale)
    print(
        f"fused Triton kernels, interpreted on CPU (B/16 shapes, first {num_blocks} of 12 blocks, batch 1, fp32): "
        f"max |diff| vs timm = {err:.3g} (logits up to {scale:.3g}) -> {'OK' if ok else 'FAIL'} "
        f"[{time.perf_counter() - t0:.0f} s]"
    )
    return ok


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    env = benchmark.environment(device)
    print(f"fastmixer demo on {env['device']} (torch {env['torch']}, triton {env['triton']}, timm {env['timm']})")
    path = "fused Triton kernels" if cuda else "reference PyTorch path (compiled Triton kernels need a CUDA GPU)"
    print(f"Mixer-B/16, {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}, {path}")
    t0 = time.perf_counter()
    err, scale = logits_vs_timm(args.checkpoint, device)
    # CPU: the reference path is timm's own aten math (bit-identical); CUDA: fused fp32 kernels vs cuBLAS.
    tol = 1e-3 * max(1.0, scale) if cuda else 1e-5
    ok = err <= tol
    verdict = "OK" if ok else f"FAIL (tolerance {tol:.1g})"
    print(f"logits vs timm (fp32, batch 2): max |diff| = {err:.3g} (logits up to {scale:.3g}) -> {verdict}")
    if not cuda and args.interpreted_blocks > 0:
        ok = _run_interpreted_check(args.interpreted_blocks) and ok
    batch = args.batch or (64 if cuda else 2)
    providers = ["fastmixer", "timm"] + (["timm+compile"] if cuda else [])
    dtype = "bf16" if cuda else "fp32"
    cases = [benchmark.Case("model", "b16", "inference", p, batch, dtype) for p in providers]
    label = "GPU" if cuda else "CPU (not GPU speed)"
    print(f"\nspeed, Mixer-B/16 inference, batch {batch}, {dtype}, {label}:")
    results = benchmark.run_suite(
        cases,
        device,
        warmup=3 if cuda else 1,
        iters=20 if cuda else 3,
        cpu_compile="none",
        log=lambda line: None,
    )
    timm_ms = next((r["ms"] for r in results if r["provider"] == "timm" and "ms" in r), None)
    print("| provider | ms / batch | img/s | vs timm eager |\n|---|---:|---:|---:|")
    for r in results:
        if "ms" not in r:
            print(f"| {r['provider']} | {r.get('error') or r.get('skipped')} | | |")
            continue
        vs = f"{timm_ms / r['ms']:.2f}x" if timm_ms else ""
        print(f"| {r['provider']}{' (CPU)' if not cuda else ''} | {r['ms']:.1f} | {r['img_s']:.1f} | {vs} |")
    print(f"\n(done in {time.perf_counter() - t0:.0f} s; `fastmixer bench` runs the full comparison)")
    return 0 if ok else 1
