#!/usr/bin/env bash
# The GPU check, in one go (under ten minutes on one GPU): the CUDA tests, then the throughput
# table on the paper net and on the largest networks (digits-conv, digits-vae), in float32.
#
#   bash benchmarks/gpu.sh [OUT_DIR]      # default OUT_DIR: gpu-results
#
# Needs a CUDA build of torch and the package installed (pip install -e ".[test]"); writes
# OUT_DIR/{nvidia-smi.txt,cuda-tests.log,throughput.log,throughput-paper.md,throughput-large.md}. Each step has its
# own time limit, so that one slow step cannot take the others' time; a failed step is reported and
# the script goes on.
set -u
OUT=${1:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0
step() {  # step NAME SECONDS LOG COMMAND...
    local name=$1 secs=$2 log=$3; shift 3
    echo "== $name (limit ${secs}s)" | tee -a "$log"
    local t0=$SECONDS
    timeout "$secs" "$@" 2>&1 | tee -a "$log"; local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    [ $rc -eq 0 ] || status=1
}
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to torch ($($PY -c 'import torch; print(torch.__version__)')): nothing to do" >&2
    exit 2
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
step "CUDA tests (every test named or marked cuda: runner, conformance kit on CUDA)" 300 \
    "$OUT/cuda-tests.log" $PY -m pytest -q -p no:randomly -k cuda tests/
step "throughput, paper net" 120 "$OUT/throughput.log" $PY benchmarks/throughput_table.py --device cuda --problems paper \
    --max-batch 1000000 --max-seconds 30 --out "$OUT/throughput-paper.md"
step "throughput, digits-conv and digits-vae" 150 "$OUT/throughput.log" $PY benchmarks/throughput_table.py --device cuda \
    --problems digits-conv,digits-vae --max-seconds 30 --out "$OUT/throughput-large.md"
exit $status
