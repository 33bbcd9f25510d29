"""bench/token_bwd_routes.py (the token backward's fused vs split routes, timed on a GPU by bench/gpu_report.sh): its
plumbing on CPU with an injected timer, and its verdicts on made-up samples."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import token_bwd_routes as tbr


def test_compare_times_both_routes_and_reports_the_rule():
    seen = []

    def timer(candidates):  # records what would be timed; runs nothing (a B/16 block is slow under the interpreter)
        seen.append(sorted(candidates))
        return {"fused": [1.0, 1.1, 1.2], "split": [2.0, 2.1, 2.2]}

    rows = tbr.compare([("b16", 22, torch.bfloat16), ("b16", 21, torch.bfloat16)], timer, "cpu")
    assert seen == [["fused", "split"], ["fused", "split"]]
    assert [r["rule"] for r in rows] == ["fused", "split"]  # B/16: 12 channel tiles per image, fused from batch 22
    dout, args = tbr.block_case("b16", 2, torch.bfloat16, "cpu")
    assert args.x.shape == dout.shape == (2, 196, 768) and args.fc1_weight.shape == (384, 196)


def test_verdicts():
    def row(rule, fused, split):
        return dict(variant="b16", batch=256, dtype=torch.bfloat16, rule=rule, samples=dict(fused=fused, split=split))

    fast, slow, overlapping = [1.0, 1.05, 1.1, 1.12], [2.0, 2.1, 2.2, 2.3], [1.08, 1.1, 1.15, 1.2]
    table = tbr.format_rows(
        [row("fused", fast, slow), row("split", fast, slow), row("fused", fast, overlapping),
         dict(variant="h14", batch=1, dtype=torch.bfloat16, rule="split", skipped="S = 1024")]
    )  # fmt: skip
    lines = table.splitlines()[2:]
    assert "| agrees (fused faster) |" in lines[0] and "1.038 / 1.075 / 1.105" in lines[0]
    assert "| DISAGREES (fused faster) |" in lines[1]
    assert "| within noise (fused faster) |" in lines[2]
    assert "skipped: S = 1024" in lines[3]


def test_main_refuses_without_a_gpu(capsys):
    if torch.cuda.is_available():
        return
    assert tbr.main(["--batch", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
