#!/usr/bin/env bash
# Verify data-parallel training and evaluation on one host with several GPUs (issue 7), offline.
#   scripts/verify-multi-gpu.sh train|eval-one|compare MODEL DATA WORK [NPROC]
# train:    torchrun DDP training of the smollm2-gpu preset on hf (auto picks it for WORLD_SIZE>1), then
#           `tunebench eval` of base and tuned on NPROC processes, then report + gate.
# eval-one: the tuned adapter evaluated again in ONE process with its own generation cache.
# compare:  bench.same_results of the one-process against the NPROC-process tuned results.
# Steps are separate so each fits one call of a time-limited machine; WORK keeps the state between them.
set -euo pipefail
step=$1 model=$2 data=$3 work=$4 nproc=${5:-2}
run=$work/run
py=${PYTHON:-python3}
case $step in
  train)
    export TUNEBENCH_CACHE=$work/cache-many
    $py -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m tunebench train smollm2-gpu \
      model.ref="$model" data.source="$data" train.backend=auto train.max_steps=60 train.eval_every=30 \
      train.save_every=30 --out "$run" --overwrite
    $py -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m tunebench eval "$run"
    $py -m tunebench report "$run"
    ;;
  eval-one)
    mkdir -p "$work/cache-one"
    # the same dequantized weights, but no generations carried over from the data-parallel run
    ln -sfn "$work/cache-many/gguf" "$work/cache-one/gguf"
    TUNEBENCH_CACHE=$work/cache-one $py -m tunebench eval --model "$model" --adapter "$run/adapter" \
      --data-from "$run" --label tuned --out "$work/tuned-one-process.json"
    ;;
  compare)
    $py -m tunebench.bench.same_results "$work/tuned-one-process.json" "$run/eval/tuned/results.json" \
      --out "$work/same-results.json"
    ;;
  *) echo "unknown step $step (train, eval-one, compare)" >&2; exit 2 ;;
esac
