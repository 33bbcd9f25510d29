"""`fastmixer demo` (what `make demo` runs): build Mixer-B/16, show its logits equal timm's, time it against timm.

On CUDA the fused Triton kernels run (bf16 timing, fp32 logit check); on CPU the reference PyTorch path runs, at a small
batch with few iterations, and the speed table is labelled CPU (it is not a GPU speed).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from fastmixer import benchmark


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="Mixer-B/16: logits equal timm's, and a short speed table")
    p.add_argument("--checkpoint", default=None, help="timm / mmpretrain / JAX checkpoint (default: random weights)")
    p.add_argument("--batch", type=int, default=None, help="timing batch (default: 64 on CUDA, 2 on CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
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


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    env = benchmark.environment(device)
    print(f"fastmixer demo on {env['device']} (torch {env['torch']}, triton {env['triton']}, timm {env['timm']})")
    path = "fused Triton kernels" if cuda else "reference PyTorch path (CPU; the Triton kernels need a CUDA GPU)"
    print(f"Mixer-B/16, {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}, {path}")
    t0 = time.perf_counter()
    err, scale = logits_vs_timm(args.checkpoint, device)
    # CPU: the reference path is timm's own aten math (bit-identical); CUDA: fused fp32 kernels vs cuBLAS.
    tol = 1e-3 * max(1.0, scale) if cuda else 1e-5
    ok = err <= tol
    verdict = "OK" if ok else f"FAIL (tolerance {tol:.1g})"
    print(f"logits vs timm (fp32, batch 2): max |diff| = {err:.3g} (logits up to {scale:.3g}) -> {verdict}")
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
