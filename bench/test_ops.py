"""Op level: token_mix and channel_mix at Mixer-B/16 shapes, forward and forward+backward, every provider."""

import pytest
from conftest import BATCH, DTYPE, run_case

from fastmixer.bench import harness


@pytest.mark.parametrize("provider", harness.PROVIDERS)
@pytest.mark.parametrize("mode", harness.OP_MODES)
@pytest.mark.parametrize("op", harness.OPS)
def test_op(benchmark, op, mode, provider):
    benchmark.group = f"{op} {mode}"  # benchmark: pytest-benchmark's fixture
    run_case(benchmark, harness.Case("op", op, mode, provider, BATCH, DTYPE, variant="b16"))
