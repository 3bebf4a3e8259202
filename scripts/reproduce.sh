#!/usr/bin/env bash
# The paper's pipeline for one task, every stage, one command (Table 4: Baseline, + BPE 10K, MDN):
#
#   bash scripts/reproduce.sh TASK [--quick] [--peers] [--data DIR] [--work DIR] [--results DIR]
#                                  [--world-size N] [--threads N]
#
# TASK: multi30k_en_{de,fr}[_small] (64 / 256 wide), wmt14_en_de, wmt14_en_fr, nist12_zh_en (settings: configs/TASK.sh)
#  1 prepare   mdn-prepare: Moses tokenisation, BPE (baseline: joint; MDN: small target vocabulary),
#              length/ratio filter, fairseq-preprocess                                 -> WORK/data
#  2 baseline  the baseline architecture on the baseline BPE                           -> WORK/baseline
#  3 bpe10k    the same architecture on the MDN BPE: "+ BPE 10K", and the teacher      -> WORK/bpe10k
#  4 seqkd     the teacher translates the training set (beam 4): sequence-level KD data -> WORK/seqkd
#              (when the config's STUDENT_DATA is original+distilled, the authors' setting)
#  5 init      mdn-init: the student from the teacher (weight distillation)            -> WORK/mdn_init.pt
#  6 mdn       the student on STUDENT_DATA, from the WD init, no label smoothing,
#              decoder dropout 0                                                       -> WORK/mdn
#  6a peers    --peers: the paper's peers (Table 4), each trained exactly as the Baseline (baseline BPE,
#              label smoothing 0.1), models from the config (AAN_ARCH/AAN_ARGS, SAN_..., CAN_...)
#                                                                                      -> WORK/{aan,san,can}
#  6b + Ours   --peers: Table 7, the MDN row's recipe on AAN and CAN (mdn-init from the teacher, STUDENT_DATA,
#              no label smoothing, decoder dropout 0; AAN_MDN_ARCH/_ARGS, CAN_MDN_...) -> WORK/{aan_mdn,can_mdn}
#  7 evaluate  average the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6; tokenised BLEU and
#              sacreBLEU on valid and on every test set of the config (SPLITS test=MAIN,EXTRA,...)
#  8 benchmark mdn-bench: the models side by side on the test source, batch 64, beam 4, CPU
#              (and GPU, fp16, when there is one)
#  9 report    RESULTS/results.md and results.json (--peers: with the peer rows and a Table 7 block)
# Default WORK: work/TASK (work/TASK-quick with --quick); RESULTS: results/TASK (WORK/results with --quick).
# Re-running skips every finished stage (judged by its outputs) and resumes an interrupted training
# from its checkpoint_last.pt.  --world-size N: fairseq's distributed data parallel on N GPUs, or without CUDA
# in N local processes (gloo, legacy_ddp: see scripts/lib/recipe.sh); more nodes: EXTRA_TRAIN_ARGS.
set -euo pipefail

SCRIPT=reproduce.sh
# shellcheck source=scripts/lib/recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

stage "1 prepare (mdn-prepare; $CFG)"
prepare_data

stage "2 baseline: $BASELINE_ARCH on the baseline BPE"
train baseline "$D/baseline/bin" "$MAX_EPOCH" "${BASE[@]}"
stage "3 + BPE 10K: $BASELINE_ARCH on the MDN BPE (the teacher)"
train_teacher

if [ "$STUDENT_DATA" = original+distilled ]; then
  stage "4 sequence-level KD data: the teacher translates the training set (mdn-seqkd, beam 4)"
  seqkd_data
  STUDENT_BIN=$WORK/seqkd/bin
else
  stage "4 sequence-level KD data: not used (STUDENT_DATA=$STUDENT_DATA in $CFG)"
  STUDENT_BIN=$D/mdn/bin
fi

stage "5 weight distillation: mdn-init $STUDENT_ARCH from the teacher"
wd_init

stage "6 MDN student: $STUDENT_ARCH, WD init, $STUDENT_DATA data, no label smoothing, decoder dropout 0"
train mdn "$STUDENT_BIN" "$STUDENT_MAX_EPOCH" --arch "$STUDENT_ARCH" --criterion cross_entropy \
  --decoder-dropout 0 --finetune-from-model "$WORK/mdn_init.pt"

if [ $PEERS = 1 ]; then
  stage "6a peers (Table 4): $AAN_ARCH, $SAN_ARCH, $CAN_ARCH on the baseline BPE, trained as the Baseline"
  for key in "${PEER_KEYS[@]}"; do train_peer "$key"; done
  stage "6b + Ours (Table 7): $AAN_MDN_ARCH, $CAN_MDN_ARCH, WD init, $STUDENT_DATA data, as the MDN student"
  for key in "${OURS_KEYS[@]}"; do train_ours "$key"; done
fi

stage "7 evaluate (average of the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6)"
for key in "${ROWS[@]}"; do evaluate "$key" "$D/${ROW_BPE[$key]}/bin" "$D/raw"; done

stage "8 benchmark (mdn-bench: the ${#ROWS[@]} models side by side on the test source, batch 64, beam 4)"
mkdir -p "$WORK/bench"
for s in baseline mdn; do
  if [ "$BENCH_LINES" -gt 0 ]; then head -n "$BENCH_LINES" "$D/$s/test.$SRC"; else cat "$D/$s/test.$SRC"; fi \
    > "$WORK/bench/input.$s.$SRC"
done
BENCH=(--batch-size 64 --beam 4 --repeats "$REPEATS" "${GEN_LEN[@]}") NAMES=() AVGS=()
for key in "${ROWS[@]}"; do
  BENCH+=(--path "$WORK/$key/checkpoint_avg.pt" --name "${ROW_NAME[$key]}" --data "$D/${ROW_BPE[$key]}/bin"
          --input "$WORK/bench/input.${ROW_BPE[$key]}.$SRC")
  NAMES+=("${ROW_NAME[$key]}") AVGS+=("$WORK/$key/checkpoint_avg.pt")
done
newest=$(ls -t "${AVGS[@]}" | head -n 1)
if ! { fresh "$WORK/bench/cpu.json" "$newest" && bench_covers "$WORK/bench/cpu.json" "${NAMES[@]}"; }; then
  mdn-bench "${BENCH[@]}" --threads "$THREADS" --out-md "$WORK/bench/cpu.md" --out-json "$WORK/bench/cpu.json" 2> "$WORK/bench/cpu.err" \
    || { tail -n 20 "$WORK/bench/cpu.err" >&2; die "mdn-bench failed (see $WORK/bench/cpu.err)"; }
fi
if [ "$GPU" -gt 0 ] && ! { fresh "$WORK/bench/gpu.json" "$newest" && bench_covers "$WORK/bench/gpu.json" "${NAMES[@]}"; }; then
  mdn-bench "${BENCH[@]}" --device cuda --fp16 --out-md "$WORK/bench/gpu.md" --out-json "$WORK/bench/gpu.json" \
    2> "$WORK/bench/gpu.err" || { tail -n 20 "$WORK/bench/gpu.err" >&2; die "mdn-bench on GPU failed"; }
fi

stage "9 report"
# a plain run (e.g. ablation.sh's first step) over a --peers table newer than every model keeps it: rewriting it
# would drop the peer rows it shares the Baseline, + BPE 10K and MDN rows with
if [ $PEERS = 0 ] && fresh "$RESULTS/results.json" "$newest" && python -c 'import json, sys
sys.exit(not json.load(open(sys.argv[1])).get("peers"))' "$RESULTS/results.json" 2> /dev/null; then
  echo "   $RESULTS/results.md: kept, it is a --peers table newer than these models (re-run with --peers to rewrite it)"
else
  mdn-report table --work "$WORK" --config "$CFG" --out-md "$RESULTS/results.md" --out-json "$RESULTS/results.json" \
    --command "$COMMAND" $([ $PEERS = 1 ] && echo --peers)
fi
stage "done: $RESULTS/results.md"
