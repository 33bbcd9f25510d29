"""Model level: Mixer-B/16 and L/16, inference and a training step (forward + CE + backward + SGD), every provider."""

import pytest
from conftest import BATCH, BLOCKS, DTYPE, run_case

from fastmixer import benchmark


@pytest.mark.parametrize("provider", benchmark.PROVIDERS)
@pytest.mark.parametrize("mode", benchmark.MODEL_MODES)
@pytest.mark.parametrize("variant", ["b16", "l16"])
def test_model(benchmark, variant, mode, provider):
    from fastmixer import benchmark as harness

    benchmark.group = f"{variant} {mode}"
    run_case(benchmark, harness.Case("model", variant, mode, provider, BATCH, DTYPE, num_blocks=BLOCKS))
