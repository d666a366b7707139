#!/usr/bin/env bash
# The mixed-precision acceptance cells (issue: mixed precision), bf16-mixed, one thread each:
#   queue a: SST-2 SpaRTA Wv,Wo and LoRA r=8 q,v at 3e-3, seeds 0-2 (docs/RESULTS.md's SST-2 protocol)
#   queue b: the GSM8K rate probes at the chosen rates (SpaRTA 3e-3, LoRA 1e-3), the fp32 probes' configs
# A finished cell (results.json) is skipped; a half-finished one resumes from its newest checkpoint.
# Run from the repository root of a pinned worktree: experiments/results/precision/run.sh a|b OUT
set -euo pipefail
queue=$1
out=$2
export OMP_NUM_THREADS=1
py=${PYTHON:-python}

cell() {  # name, then sparta train flags
  local name=$1
  shift
  local dir=$out/$name
  if [ -f "$dir/results.json" ]; then return; fi
  local resume=()
  if compgen -G "$dir/checkpoint-*" >/dev/null; then resume=(--resume); fi
  $py -c 'import sys; from sparta.cli import main; sys.exit(main())' train "$@" --precision bf16-mixed --save-every 25 --no-progress --output "$dir" \
    "${resume[@]}" >"$dir.log" 2>&1
}

common=(--task sst2 --max-train-samples 2000 --epochs 1 --batch-size 16 --lr 3e-3 --warmup-ratio 0.1 --no-zero-shot)
if [ "$queue" = a ]; then
  for seed in 0 1 2; do
    cell sst2-sparta-vo-seed$seed "${common[@]}" --method sparta --targets v_proj,o_proj --density 0.034722 --seed $seed
    cell sst2-lora-seed$seed "${common[@]}" --method lora --targets q_proj,v_proj --lora-r 8 --lora-alpha 16 \
      --lora-dropout 0.1 --seed $seed
  done
else
  probe=(--task gsm8k --max-train-samples 200 --max-eval-samples 200 --epochs 1 --batch-size 8 --warmup-ratio 0.1
    --no-zero-shot --eval-generate false)
  cell gsm8k-probe-sparta-vo-lr3e-3 "${probe[@]}" --method sparta --targets v_proj,o_proj --density 0.0347 --lr 3e-3
  cell gsm8k-probe-lora-lr1e-3 "${probe[@]}" --method lora --lora-r 8 --lora-alpha 16 --lora-dropout 0.1 --lr 1e-3
fi
