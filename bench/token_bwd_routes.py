"""The token-mix backward's two routes for its token GEMMs, timed against each other on a CUDA GPU.

    python bench/token_bwd_routes.py [--models b16,l16] [--batch 16,64,256] [--dtype bf16]

token_mix_bwd (kernels/token_mix_bwd.py) runs dgrad + dy as one kernel (_token_dgrad_dy_kernel, split=False) on sm_90
for 16-bit weights at S <= 256 when the grid has >= _FUSED_MIN_PROGRAMS programs, and as the split pair
(_token_dgrad_kernel + _token_dy_kernel, split=True) otherwise. That rule and its threshold come from the time MODEL,
not from a measurement; this script measures both routes (the whole token_mix_bwd call, CUDA events, the runtime
selection's timer: warm-up, interleaved samples) at Mixer block shapes and prints per case the median and quartiles
of each route, which one the rule picks, and whether the measurement agrees. bench/gpu_report.sh appends its output
to env.txt. Cases the fused kernel cannot run (fp32 weights, S > 256) are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastmixer.bench.harness import _dims
from fastmixer.kernels import token_mix_bwd as tmb
from fastmixer.mix_args import MixArgs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Timer = Callable[[dict[str, Callable[[], Any]]], dict[str, list[float]]]


def block_case(
    variant: str, batch: int, dtype: torch.dtype, device: str | torch.device
) -> tuple[torch.Tensor, MixArgs]:
    """dout and the token_mix operands of one `variant` block at `batch` (random, seeded), on `device`."""
    d = _dims(variant)
    S, C, Dt = d["S"], d["C"], d["Dt"]
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    x = r(batch, S, C)
    params = [r(C, scale=0.1) + 1, r(C, scale=0.1), r(Dt, S, scale=S**-0.5), r(Dt, scale=0.1), r(S, Dt, scale=Dt**-0.5),
              r(S, scale=0.1)]  # fmt: skip
    return r(batch, S, C), MixArgs(x, *params)


def compare(cases: Sequence[tuple[str, int, torch.dtype]], timer: Timer, device: str | torch.device) -> list[dict]:
    """One row per (variant, batch, dtype): the samples of each route and the route token_mix_bwd's rule picks."""
    rows = []
    for variant, batch, dtype in cases:
        dout, args = block_case(variant, batch, dtype, device)
        B, S, C = args.x.shape
        row = dict(variant=variant, batch=batch, dtype=dtype, rule="fused" if tmb._fuses(B, S, C, dtype, dout.device)
                   else "split")  # fmt: skip
        if not tmb._can_fuse(S, dtype):
            rows.append(dict(row, skipped=f"S = {S}, {dtype}: the fused kernel cannot run (fp16/bf16, S <= 256)"))
            continue

        def run(split: bool, dout=dout, args=args) -> Callable[[], Any]:
            return lambda: tmb.token_mix_bwd(dout, args, eps=1e-6, allow_tf32=False, split=split)

        rows.append(dict(row, samples=timer({"fused": run(False), "split": run(True)})))
    return rows


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def format_rows(rows: Sequence[dict]) -> str:
    """The table: per case the two routes' quartiles (ms per token_mix_bwd call), the rule's pick, and whether the
    faster median with non-overlapping quartiles agrees ("agrees" / "DISAGREES" / "within noise")."""
    out = [
        "| variant | batch | dtype | fused ms (q1 / median / q3) | split ms (q1 / median / q3) | rule | measured |",
        "|---|---:|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['variant']} | {r['batch']} | {str(r['dtype']).removeprefix('torch.')} |"
        if "skipped" in r:
            out.append(f"{head} - | - | {r['rule']} | skipped: {r['skipped']} |")
            continue
        (f1, fm, f3), (s1, sm, s3) = _quartiles(r["samples"]["fused"]), _quartiles(r["samples"]["split"])
        faster = "fused" if fm < sm else "split"
        apart = f3 < s1 if faster == "fused" else s3 < f1
        verdict = ("agrees" if faster == r["rule"] else "DISAGREES") if apart else "within noise"
        out.append(f"{head} {f1:.3f} / {fm:.3f} / {f3:.3f} | {s1:.3f} / {sm:.3f} / {s3:.3f} | {r['rule']} | "
                   f"{verdict} ({faster} faster) |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="b16,l16")
    parser.add_argument("--batch", default="16,64,256")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("token_bwd_routes: needs a CUDA GPU (the routes are timed with CUDA events)", file=sys.stderr)
        return 2
    from fastmixer.select import cuda_timer

    cases = [(v, int(b), DTYPES[args.dtype]) for v in args.models.split(",") for b in args.batch.split(",")]
    name = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    print(f"token_mix_bwd routes on {name} (sm_{cap[0]}{cap[1]}), ms per call (dgrad + dy fused vs split pair):")
    print(format_rows(compare(cases, cuda_timer, "cuda")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
