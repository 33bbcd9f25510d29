#!/usr/bin/env bash
# The GPU report in one command (see /work/shared/GPU.md and bench/README.md):
#   bash bench/gpu_report.sh OUT_DIR        (on the device machine: bash bench/gpu_report.sh "$OUT")
# On a CUDA machine with torch, triton, timm, pytest, pytest-benchmark, numpy, safetensors and no package registry:
# runs the test suite on compiled kernels, then the benchmarks (B/16 and L/16, bf16, batch 256 and 64, inference and a
# training step; ops at B/16 shapes), and writes at most 8 files into OUT_DIR. Each step has its own timeout so the
# whole run stays within ~9 minutes; the benchmark JSON/Markdown are rewritten after every case, so a step cut short by
# its timeout still leaves the rows measured so far.
set -u
OUT=${1:?usage: bash bench/gpu_report.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
unset TRITON_INTERPRET FASTMIXER_BACKEND
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fastmixer-inductor}
# The runtime selection's cache (fused vs reference per op): fresh for each report, shared by its steps.
export FASTMIXER_CACHE_DIR=${FASTMIXER_CACHE_DIR:-$(mktemp -d /tmp/fastmixer-select.XXXXXX)}
T0=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - T0 )) s elapsed)" | tee -a "$OUT/env.txt"; }

# 0. the machine (file 1: env.txt)
step "environment"
{ nvidia-smi; "$PY" -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__,
'timm', timm.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } >>"$OUT/env.txt" 2>&1

# 1. correctness on compiled kernels (file 2: tests.log), <= 200 s
step "tests (compiled kernels)"
timeout -k 10 200 "$PY" -m pytest -q -p no:cacheprovider -ra --durations=15 tests >"$OUT/tests.log" 2>&1
echo "pytest exit code: $? (124 = timed out)" >>"$OUT/tests.log"

# 1b. runtime selection (appended to env.txt: the file count is capped), <= 120 s: fused vs reference per op at
#     B/16 and L/16 block shapes, bf16 tensors, batch 256, forward and forward + backward (median ms per call)
#     and the choice the selection made for each; the later steps reuse these choices from the cache.
step "runtime selection (fused vs reference per op)"
timeout -k 10 120 "$PY" -m fastmixer.select --models b16,l16 --batch 256 --dtype bf16 >>"$OUT/env.txt" 2>&1
echo "selection exit code: $? (124 = timed out)" >>"$OUT/env.txt"

# 1c. the token backward's two routes (appended to env.txt), <= 90 s: dgrad + dy fused vs the split pair, B/16 and
#     L/16 bf16 at batch 16, 64 and 256, and whether token_mix_bwd's shape rule (from the time MODEL) picks the faster.
step "token backward routes (fused dgrad + dy vs split pair)"
timeout -k 10 90 "$PY" bench/token_bwd_routes.py --models b16,l16 --batch 16,64,256 --dtype bf16 >>"$OUT/env.txt" 2>&1
echo "token_bwd_routes exit code: $? (124 = timed out)" >>"$OUT/env.txt"

# 2. model level through the CLI (files 3-5: report.json, report.md, bench.log; report.png if matplotlib is there),
#    <= 260 s: B/16 and L/16, bf16, batch 256 then 64, all providers; counts (no GPU needed) first.
step "model benchmarks"
timeout -k 10 260 "$PY" -m fastmixer bench --models b16,l16 --ops none --batch 256,64 --dtype bf16 \
  --modes inference,training --count --time-budget 200 --out "$OUT" --name report >"$OUT/bench.log" 2>&1
echo "bench exit code: $? (124 = timed out)" >>"$OUT/bench.log"

# 3. op level through pytest-benchmark (files 6-7: pytest_bench.json, pytest_bench.log), what is left of ~9 min
step "op benchmarks (pytest bench/test_ops.py)"
LEFT=$(( 515 - ($(date +%s) - T0) ))
if [ "$LEFT" -gt 30 ]; then
  FASTMIXER_BENCH_BATCH=256 FASTMIXER_BENCH_DTYPE=bf16 timeout -k 10 "$LEFT" "$PY" -m pytest -q -p no:cacheprovider \
    bench/test_ops.py --benchmark-json="$OUT/pytest_bench.json" --benchmark-columns=min,median,mean,rounds \
    >"$OUT/pytest_bench.log" 2>&1
  echo "pytest bench exit code: $? (124 = timed out)" >>"$OUT/pytest_bench.log"
else
  echo "skipped: no time left" >"$OUT/pytest_bench.log"
fi

# 4. per fused op, measured vs the time MODEL (appended to report.md and printed; the file count is capped), <= 15 s,
#    JSON/text only (no torch): forward and backward (= forward+backward - forward), fused vs reference from the
#    selection's lines in env.txt (step 1b), every provider from pytest_bench.json (step 3) and any op rows of
#    report.json, each beside the model of the same device kind (newest bench/results/*-time-model-{h100,h200}.json).
step "per op: measured vs MODEL (bench/op_vs_model.py)"
{ echo; timeout -k 5 15 "$PY" bench/op_vs_model.py "$OUT/env.txt" "$OUT/pytest_bench.json" "$OUT/report.json" 2>&1
  echo "op_vs_model exit code: $? (124 = timed out)"; } | tee -a "$OUT/report.md"
step "done"
ls -la "$OUT" >>"$OUT/env.txt"
