#!/usr/bin/env bash
# The paper's Table 3 (training strategies) at CPU scale on Multi30k En-De:
# teacher, then mdn_tiny students from scratch, with weight distillation (WD), WD + word-level KD,
# WD + sequence-level KD (original + distilled data, the authors' setting); test BLEU of each.
#
#   bash scripts/training_strategies.sh [--data DIR] [--work DIR] [--quick]
#
# Reuses scripts/demo.sh for data preparation and the from-scratch student (same --work folder).
# Writes WORK/training_strategies.md.  Re-running skips finished stages; an interrupted training
# resumes from its checkpoint_last.pt.  Sizes: MAX_EPOCH (default 8), THREADS, KD_ALPHA (0.5).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$REPO/work/demo
DEMO_ARGS=()
QUICK=0
while [ $# -gt 0 ]; do
  case $1 in
    --data) DEMO_ARGS+=(--data "$2"); shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --quick) QUICK=1; DEMO_ARGS+=(--quick); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "training_strategies.sh: unknown argument '$1' (expected --data DIR, --work DIR or --quick)" >&2; exit 2 ;;
  esac
done
[ $QUICK = 1 ] && : "${MAX_EPOCH:=1}" "${MAX_UPDATE:=10}"
: "${MAX_EPOCH:=8}" "${MAX_UPDATE:=0}" "${KD_ALPHA:=0.5}" "${THREADS:=$(nproc)}"
export MAX_EPOCH MAX_UPDATE THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
START=$(date +%s)
stage() { echo "== [table3 $(( $(date +%s) - START ))s] $*"; }

stage "data and the from-scratch student (scripts/demo.sh --work $WORK)"
bash "$REPO/scripts/demo.sh" --work "$WORK" "${DEMO_ARGS[@]}" | grep -E "^== |BLEU" || true
cd "$WORK"

# the settings shared by every model: Adam, lr 0.002, no label smoothing, decoder dropout 0
COMMON=(--user-dir "$REPO/mdn_fairseq" --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002
        --lr-scheduler inverse_sqrt --warmup-updates 400 --dropout 0.1 --max-tokens 4096
        --max-epoch "$MAX_EPOCH" --no-epoch-checkpoints --seed 1 --num-workers 0
        --log-format simple --log-interval 50)
[ "$MAX_UPDATE" -gt 0 ] && COMMON+=(--max-update "$MAX_UPDATE")

train() {  # train NAME DATA ARGS...: skip when NAME/checkpoint_last.pt has reached the last epoch
  local name=$1 data=$2; shift 2
  stage "train $name (log: $WORK/$name.log)"
  fairseq-train "$data" "${COMMON[@]}" --save-dir "$name" "$@" > "$name.log" 2>&1 \
    || { tail -n 30 "$name.log" >&2; echo "training_strategies.sh: training $name failed (see $WORK/$name.log)" >&2; exit 1; }
  grep -E "\| valid \|" "$name.log" | tail -n 1 || true
}

train teacher bin --arch mdn_transformer_tiny --criterion cross_entropy
WD=(--task translation_wd --teacher-path teacher/checkpoint_last.pt --arch mdn_tiny --decoder-dropout 0)
train student_wd bin "${WD[@]}" --criterion cross_entropy
train student_wd_wordkd bin "${WD[@]}" --criterion kd_cross_entropy --kd-alpha "$KD_ALPHA"
stage "sequence-level KD data: the teacher translates the training set (beam 4)"
mdn-seqkd --teacher teacher/checkpoint_last.pt --data bin --out seqkd --beam 4 --batch-size 64 --with-original --cpu \
  | grep -v "^mdn-seqkd: chunk" || true
train student_wd_seqkd seqkd/bin "${WD[@]}" --criterion cross_entropy

bleu() {  # bleu CHECKPOINT: tokenised, case-sensitive BLEU on test_2016_flickr, beam 4
  fairseq-generate bin --user-dir "$REPO/mdn_fairseq" --path "$1" --gen-subset test --beam 4 --batch-size 64 \
    --required-batch-size-multiple 1 --remove-bpe 2> /dev/null | tail -n 1 | sed -E 's/.*BLEU4 = ([0-9.]+),.*/\1/'
}
params() { python -c "import sys, mdn_fairseq, mdn_fairseq.checkpoint as c; s = c.load_checkpoint(sys.argv[1])['model']; print(sum(v.numel() for k, v in s.items() if k.endswith(('weight', 'bias'))))" "$1"; }

stage "evaluate (fairseq-generate, test_2016_flickr, beam 4, batch 64)"
{
  echo "| row | model | training | #params | test BLEU |"
  echo "|---|---|---|---|---|"
  echo "| teacher | mdn_transformer_tiny (2+2) | NLL | $(params teacher/checkpoint_last.pt) | $(bleu teacher/checkpoint_last.pt) |"
  echo "| from scratch | mdn_tiny (4+1) | NLL | $(params checkpoints/checkpoint_last.pt) | $(bleu checkpoints/checkpoint_last.pt) |"
  echo "| + WD | mdn_tiny (4+1) | init from teacher, NLL | $(params student_wd/checkpoint_last.pt) | $(bleu student_wd/checkpoint_last.pt) |"
  echo "| + WD + word KD | mdn_tiny (4+1) | init from teacher, (1-a)NLL + a KD, a=$KD_ALPHA | $(params student_wd_wordkd/checkpoint_last.pt) | $(bleu student_wd_wordkd/checkpoint_last.pt) |"
  echo "| + WD + seq KD | mdn_tiny (4+1) | init from teacher, NLL on original + distilled | $(params student_wd_seqkd/checkpoint_last.pt) | $(bleu student_wd_seqkd/checkpoint_last.pt) |"
} > training_strategies.md.tmp
mv training_strategies.md.tmp training_strategies.md
cat training_strategies.md
stage "done"
