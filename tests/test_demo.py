"""`fastmixer demo` (what `make demo` runs): its logit check and its interpreted-kernel check."""

import pytest
from conftest import INTERPRET

from fastmixer import cli, demo


@pytest.mark.skipif(not INTERPRET, reason="the demo's interpreted check runs CPU tensors through the interpreter")
def test_interpreted_check_one_b16_block():
    err, scale = demo.interpreted_check(num_blocks=1)
    assert scale > 0.1  # random B/16 weights give non-trivial logits
    assert err <= 1e-4 * scale


def test_demo_cli_reports_ok(capsys):
    assert cli.main(["demo", "--device", "cpu", "--batch", "1", "--interpreted-blocks", "0"]) == 0
    out = capsys.readouterr().out
    assert "logits vs timm (fp32, batch 2): max |diff| = 0 " in out and "-> OK" in out
    assert "| fastmixer (CPU) |" in out and "| timm (CPU) |" in out
