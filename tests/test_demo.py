"""`fastmixer demo` (what `make demo` runs): its speed rule (no claim the spread does not support), the interleaved
timing, the progress relay of the interpreted-kernel check, that check itself, and the CPU output as a whole."""

import sys
import textwrap

import pytest
import torch
from conftest import INTERPRET

from fastmixer import cli, demo


# ------------------------------------------------------------------------------------------------ the rule
def test_verdict_no_claim_from_noise():
    # the same math on a noisy machine: ratios scattered around 1, one lucky round far off
    ours = [100.0, 103.0, 97.0, 100.0, 60.0, 101.0, 99.0, 100.0]
    theirs = [101.0, 100.0, 99.0, 104.0, 100.0, 98.0, 100.0, 97.0]
    line, claimed = demo.speed_verdict(ours, theirs)
    assert not claimed and "no speed difference the spread supports" in line
    assert "faster in 1" in line  # the lucky round is counted, and is not enough


def test_verdict_claims_only_consistent_differences():
    line, claimed = demo.speed_verdict([50.0] * 5, [100.0, 98.0, 103.0, 99.0, 101.0])
    assert claimed and "fastmixer faster, 2.00x" in line and "faster in 5" in line
    line, claimed = demo.speed_verdict([100.0] * 5, [50.0, 52.0, 49.0, 51.0, 50.0], theirs="timm+compile")
    assert claimed and line.startswith("timm+compile / fastmixer") and "fastmixer slower" in line
    # 4 rounds cannot pass the sign test however large the gap; 4 of 5 wins neither (p = 0.19)
    assert not demo.speed_verdict([50.0] * 4, [100.0] * 4)[1]
    assert not demo.speed_verdict([50.0] * 5, [100.0] * 4 + [50.0])[1]
    # 3 % faster in every round is within the margin: no claim
    assert not demo.speed_verdict([100.0] * 10, [103.0] * 10)[1]
    with pytest.raises(ValueError, match="paired"):
        demo.speed_verdict([1.0, 2.0], [1.0])


def test_interleaved_rotates_the_order():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    ms = demo.interleaved(steps, rounds=4, device=torch.device("cpu"), calls=2)
    assert calls == [x for x in "aabbccbbccaaccaabbaabbcc"]
    assert {k: len(v) for k, v in ms.items()} == {"a": 4, "b": 4, "c": 4}


# ------------------------------------------------------------------------------------------------ progress
CHILD = textwrap.dedent(
    """
    import sys, time
    print("PROGRESS block 1/2 running", flush=True)
    time.sleep(0.7)
    print("some other output", flush=True)
    print("PROGRESS block 1/2 done", flush=True)
    print("noise on stderr", file=sys.stderr)
    print("RESULT err=0.5 scale=2.0", flush=True)
    """
)


def test_relay_child_echoes_progress_and_heartbeats():
    lines = []
    rc, result, stderr = demo.relay_child([sys.executable, "-c", CHILD], env=None, heartbeat_s=0.2, out=lines.append)
    assert rc == 0 and result == {"err": 0.5, "scale": 2.0} and "noise on stderr" in stderr
    assert lines[0].startswith("   block 1/2 running [")
    beats = [s for s in lines if s.startswith("   ... block 1/2 running [")]
    assert len(beats) >= 2  # silent for 0.7 s with a 0.2 s heartbeat
    assert lines[-1].startswith("   block 1/2 done [") and not any("some other" in s for s in lines)


@pytest.mark.skipif(not INTERPRET, reason="the demo's interpreted check runs CPU tensors through the interpreter")
def test_interpreted_check_one_b16_block():
    said = []
    res = demo.interpreted_check(num_blocks=1, progress=said.append)
    assert said == ["block 1/1 running", "block 1/1 done"]
    assert res["scale"] > 0.1  # random B/16 weights give non-trivial logits
    assert res["err"] <= 1e-4 * res["scale"]
    # fastmixer keeps each fused op's input for backward, timm its LN outputs and MLP activations too
    assert 0 < res["ours_saved"] < 0.5 * res["timm_saved"]


# ------------------------------------------------------------------------------------------------ the command
def test_demo_cli_on_cpu(capsys):
    assert cli.main(["demo", "--device", "cpu", "--batch", "1", "--rounds", "5", "--interpreted-blocks", "0"]) == 0
    out = capsys.readouterr().out
    assert "fastmixer runs its reference path, which is timm's own PyTorch math" in out
    assert "1. logits vs timm (fp32, batch 2): max |diff| = 0 " in out and "-> OK" in out
    # the counted differences, fastmixer vs timm eager (B/16 at batch 64, bf16)
    assert "| kernel launches per forward | 64 | 148 |" in out and "|   of which per block | 5 | 12 |" in out
    assert "| GB read+written per forward |" in out
    # interleaved timing with spread, and a verdict by the written rule
    assert "5 interleaved rounds (order rotating)" in out
    assert "| fastmixer (CPU) |" in out and "| timm (CPU) |" in out and "quartiles ms" in out
    verdict = next(line for line in out.splitlines() if line.startswith("timm / fastmixer time per round"))
    assert "no speed difference the spread supports" in verdict or "sign test p = " in verdict
    assert "vs timm eager" not in out  # the old unqualified ratio column is gone


def test_demo_rejects_bad_options(capsys):
    assert cli.main(["demo", "--device", "cpu", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
