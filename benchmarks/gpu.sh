#!/usr/bin/env bash
# The GPU check, in one go (under ten minutes on one GPU): the CUDA tests, the throughput table on
# the paper net and on the largest networks (digits-conv, digits-vae), in float32, at the default
# memory budget (on a GPU a quarter of its memory, at most 16 GiB: chunks large enough to amortise
# the kernel launches), `sbn-bench run --preset paper --samples 2000 --device cuda`, timed, and
# benchmarks/gpu_probe.py (time per call against the batch, a profile, each cell's time).
#
#   bash benchmarks/gpu.sh [OUT_DIR]      # default OUT_DIR: gpu-results
#   DEVICE=cpu bash benchmarks/gpu.sh     # a dry run of the script itself on the CPU (short
#                                         # limits, a few estimators), before spending GPU time
#
# Under ten minutes: the steps' limits add up to 580 s. On an H200 the steps took 208 s (without
# the probe, with a second paper table) and the probe 72 s in separate calls: about 4½ minutes.
# Needs a CUDA build of torch and the package installed (pip install -e ".[test]"); writes
# OUT_DIR/{nvidia-smi.txt, cuda-tests.log, throughput.log, throughput-paper.md,
# throughput-large.md, paper-run.log, paper-metrics.csv, probe.log}. Each step has its own time limit, so that
# one slow step cannot take the others' time; a failed step is reported and the script goes on.
# The paper run reuses the trained checkpoints of $SBN_BENCH_CACHE (or ~/.cache/sbn-bench) when
# they are there, and trains them first (about a minute) when not.
set -u
case "${1:-}" in
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1 (usage: bash benchmarks/gpu.sh [OUT_DIR]; --help)" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "gpu.sh: one OUT_DIR at most (usage: bash benchmarks/gpu.sh [OUT_DIR])" >&2; exit 2; }
OUT=${1:-gpu-results}
DEVICE=${DEVICE:-cuda}
mkdir -p -- "$OUT" || exit 2
rm -f -- "$OUT"/*.log  # a rerun into the same folder starts its logs afresh
PY=${PYTHON:-python}
SBN=${SBN_BENCH:-sbn-bench}
status=0
step() {  # step NAME SECONDS LOG COMMAND...
    local name=$1 secs=$2 log=$3; shift 3
    echo "== $name (limit ${secs}s)" | tee -a -- "$log"
    local t0=$SECONDS
    timeout "$secs" "$@" 2>&1 | tee -a -- "$log"; local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a -- "$log"
    [ $rc -eq 0 ] || status=1
}
if [ "$DEVICE" = cuda ]; then
    if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "no CUDA device visible to torch ($($PY -c 'import torch; print(torch.__version__)')): nothing to do" >&2
        exit 2
    fi
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    tests=(-k cuda) ; tp=(--max-seconds 15) ; large=(--max-seconds 20) ; samples=2000
    probe=(--what scaling,profile,cells) ; run_limit=120
else  # dry run: every step, briefly
    echo "dry run on $DEVICE: short limits, a few estimators; the figures mean nothing" > "$OUT/nvidia-smi.txt"
    tests=(-k "cuda and (psa or runner)") ; tp=(--max-seconds 1 --min-round 0.02 --estimators st,psa)
    large=("${tp[@]}") ; samples=200 ; probe=(--what scaling,profile) ; run_limit=300
fi
$PY -c 'import sys, torch, sbn_bench; print("python", sys.version.split()[0], "torch", torch.__version__,
"sbn-bench", sbn_bench.__version__)' | tee -- "$OUT/throughput.log"
step "CUDA tests (every test named or marked cuda: runner, Monte-Carlo reference, conformance kit)" 150 \
    "$OUT/cuda-tests.log" $PY -m pytest -q -p no:randomly -p no:cacheprovider "${tests[@]}" tests/
step "throughput, paper net" 60 "$OUT/throughput.log" $PY benchmarks/throughput_table.py \
    --device "$DEVICE" --problems paper --max-batch 10000000 "${tp[@]}" --out "$OUT/throughput-paper.md"
step "throughput, digits-conv and digits-vae" 100 "$OUT/throughput.log" $PY benchmarks/throughput_table.py \
    --device "$DEVICE" --problems digits-conv,digits-vae "${large[@]}" --out "$OUT/throughput-large.md"
run_dir=$(mktemp -d)
step "sbn-bench run --preset paper --samples $samples --device $DEVICE (timed)" "$run_limit" "$OUT/paper-run.log" \
    $SBN run --preset paper --samples "$samples" --device "$DEVICE" --out "$run_dir/run"
cp "$run_dir/run/metrics.csv" "$OUT/paper-metrics.csv" 2>/dev/null || echo "(the paper run wrote no metrics.csv)"
rm -rf "$run_dir"
step "where the time goes (benchmarks/gpu_probe.py)" 150 "$OUT/probe.log" $PY benchmarks/gpu_probe.py \
    --device "$DEVICE" --samples "$samples" "${probe[@]}"
exit $status
