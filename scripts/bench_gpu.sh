#!/usr/bin/env bash
# Throughput of configs/gpt2_small_shared.yaml on one GPU, in at most about 5 minutes.
#
#   bash scripts/bench_gpu.sh            # from the repository root; results in $OUT or ./bench_gpu_out
#
# Needs torch (CUDA), numpy, pyyaml, tokenizers, safetensors, tqdm, tensorboard; not `datasets`:
# the batches are synthetic (random tokens of the config's padded 50257-token vocabulary), like
# nanoGPT's bench.py, so the figures compare with its 453k / 473k / 487k tokens/s at batch
# 16 / 32 / 64 on an H100 (docs/design.md section 8).
# What runs: bf16 autocast, SDPA (flash) attention, fused AdamW, torch.compile, one optimizer
# step per micro-batch of B x 1024 tokens, B = 16, 32, 64, each in its own process so every
# batch size compiles static shapes. Then peak memory of the shared model (1 block applied 12
# times) against the unshared one (12 blocks), interleaved in one process, eager at batch 16.
#
# A smoke run of this script on any machine (what tests/test_bench.py does), through environment
# variables: BENCH_DEVICE (cuda), BENCH_BATCHES ("16 32 64"), BENCH_COMPILE (true), and
# BENCH_SET, extra space-separated KEY=VALUE overrides such as a smaller model.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench_gpu_out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/albert_gpt_inductor}"
PY="${PYTHON:-python3}"
CONFIG=configs/gpt2_small_shared.yaml
DEVICE="${BENCH_DEVICE:-cuda}"
read -r -a BATCHES <<< "${BENCH_BATCHES:-16 32 64}"
COMPILE="${BENCH_COMPILE:-true}"
COMMON=(--synthetic --set "run.device=$DEVICE" --set run.dtype=bfloat16 --set train.grad_accum_steps=1)
for item in ${BENCH_SET:-}; do
  COMMON+=(--set "$item")
done

{
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT_DIR/env.txt"

status=0
# 80 s each is room for startup and compilation (about a minute) plus 3 + 20 steps.
for batch in "${BATCHES[@]}"; do
  echo "== batch $batch, compile $COMPILE" | tee -a "$OUT_DIR/summary.txt"
  timeout 80 "$PY" -m albert_gpt bench "$CONFIG" "${COMMON[@]}" --set "run.compile=$COMPILE" \
      --set "train.batch_size=$batch" --steps 20 --warmup 3 \
      > "$OUT_DIR/batch$batch.txt" 2>&1 || status=1
  grep -v '^\[{' "$OUT_DIR/batch$batch.txt" | tail -n 8 | tee -a "$OUT_DIR/summary.txt"
done

batch="${BATCHES[0]}"
echo "== peak memory: shared (n_groups 1) vs unshared (n_groups 12), eager, batch $batch" \
  | tee -a "$OUT_DIR/summary.txt"
timeout 60 "$PY" -m albert_gpt bench "$CONFIG" "${COMMON[@]}" --set run.compile=false \
    --set "train.batch_size=$batch" --steps 8 --warmup 2 --compare model.n_groups=1,12 \
    > "$OUT_DIR/memory.txt" 2>&1 || status=1
grep -v '^\[{' "$OUT_DIR/memory.txt" | tail -n 8 | tee -a "$OUT_DIR/summary.txt"
exit $status
