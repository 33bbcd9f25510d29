"""Op level: token_mix and channel_mix at Mixer-B/16 shapes, forward and forward+backward, every provider."""

import pytest
from conftest import BATCH, DTYPE, run_case

from fastmixer import benchmark


@pytest.mark.parametrize("provider", benchmark.PROVIDERS)
@pytest.mark.parametrize("mode", benchmark.OP_MODES)
@pytest.mark.parametrize("op", benchmark.OPS)
def test_op(benchmark, op, mode, provider):
    from fastmixer import benchmark as harness

    benchmark.group = f"{op} {mode}"
    run_case(benchmark, harness.Case("op", op, mode, provider, BATCH, DTYPE, variant="b16"))
