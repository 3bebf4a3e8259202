#!/usr/bin/env bash
# The paper's Table 3 (training strategies) for one task: the MDN student from scratch, with weight
# distillation (WD), WD + word-level KD, WD + sequence-level KD, next to its teacher.
#
#   bash scripts/training_strategies.sh TASK [--quick] [--data DIR] [--work DIR] [--results DIR]
#                                             [--world-size N] [--threads N]
#
# Runs scripts/reproduce.sh TASK first (same arguments, same work folder): its "+ BPE 10K" model is the
# teacher.  Then trains, on the MDN BPE data, the student architecture for as many epochs as the teacher:
#   scratch    random init, NLL
#   wd         --task translation_wd --teacher-path TEACHER (the student initialised from the teacher), NLL
#   wd_wordkd  the same with --criterion kd_cross_entropy (KD_ALPHA, default 0.5; temperature 1)
#   wd_seqkd   mdn-init from the teacher, NLL on original + distilled pairs (mdn-seqkd), SEQKD_MAX_EPOCH
# and evaluates each as reproduce.sh does (average of the last 5 epoch checkpoints, beam 4, lenpen 0.6).
# Writes RESULTS/training_strategies.md and .json.  Re-running skips finished stages.
set -euo pipefail

ARGS=("$@")
SCRIPT=training_strategies.sh
# shellcheck source=scripts/lib/recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"  # the arguments (and --help) are checked here, first
bash "$(dirname "${BASH_SOURCE[0]}")/reproduce.sh" "${ARGS[@]}"
: "${KD_ALPHA:=0.5}"
TEACHER=$WORK/bpe10k/checkpoint_avg.pt
STUDENT=(--arch "$STUDENT_ARCH" --decoder-dropout 0)
WD=(--task translation_wd --teacher-path "$TEACHER" --wd-head index --wd-head-index 0)

stage "T1 student from scratch: $STUDENT_ARCH, NLL"
train scratch "$D/mdn/bin" "$MAX_EPOCH" "${STUDENT[@]}" --criterion cross_entropy
stage "T2 + WD: initialised from the teacher, NLL"
train wd "$D/mdn/bin" "$MAX_EPOCH" "${STUDENT[@]}" "${WD[@]}" --criterion cross_entropy
stage "T3 + WD + word KD: (1-a) NLL + a KD, a=$KD_ALPHA"
train wd_wordkd "$D/mdn/bin" "$MAX_EPOCH" "${STUDENT[@]}" "${WD[@]}" --criterion kd_cross_entropy \
  --kd-alpha "$KD_ALPHA"

stage "T4 + WD + seq KD: mdn-init, then NLL on original + distilled data"
seqkd_data
wd_init
train wd_seqkd "$WORK/seqkd/bin" "$SEQKD_MAX_EPOCH" "${STUDENT[@]}" --criterion cross_entropy \
  --finetune-from-model "$WORK/mdn_init.pt"

stage "T5 evaluate (average of the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6)"
for name in scratch wd wd_wordkd wd_seqkd; do evaluate "$name" "$D/mdn/bin" "$D/raw"; done

stage "T6 report"
mdn-report strategies --work "$WORK" --config "$CFG" --out-md "$RESULTS/training_strategies.md" \
  --out-json "$RESULTS/training_strategies.json" --command "$COMMAND"
stage "done: $RESULTS/training_strategies.md"
