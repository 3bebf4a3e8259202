#!/usr/bin/env bash
# Train a tiny MDN (mdn_tiny) on Multi30k En-De and translate a few sentences, on CPU.
#
#   bash scripts/demo.sh [--data DIR] [--work DIR] [--quick]
#
# --data  folder with Multi30k task-1 raw text: {train,val,test_2016_flickr}.{en,de}.gz
#         (default: ../shared/data/multi30k next to this repository)
# --work  where the prepared data (mdn-prepare), the checkpoints and the model folder go (default: work/demo)
# --quick a few hundred sentences and a few updates: checks every stage in about a minute
#
# Sizes can be set in the environment: TRAIN_LINES (0 = all), SRC_MERGES, TGT_MERGES,
# MAX_EPOCH, MAX_UPDATE, THREADS.  Re-running reuses finished stages.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=$REPO/../shared/data/multi30k
WORK=$REPO/work/demo
QUICK=0
while [ $# -gt 0 ]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (expected --data DIR, --work DIR or --quick)" >&2; exit 2 ;;
  esac
done
if [ $QUICK = 1 ]; then
  : "${TRAIN_LINES:=800}" "${SRC_MERGES:=300}" "${TGT_MERGES:=200}" "${MAX_EPOCH:=1}" "${MAX_UPDATE:=10}"
fi
: "${TRAIN_LINES:=0}" "${SRC_MERGES:=4000}" "${TGT_MERGES:=2000}" "${MAX_EPOCH:=8}" "${MAX_UPDATE:=0}"
: "${THREADS:=$(nproc)}"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
S=en T=de
START=$(date +%s)
stage() { echo "== [demo $(( $(date +%s) - START ))s] $*"; }

for split in train val test_2016_flickr; do
  for l in $S $T; do
    f=$DATA/$split.$l.gz
    [ -s "$f" ] || { echo "demo.sh: missing $f (pass --data DIR with Multi30k {train,val,test_2016_flickr}.{en,de}.gz)" >&2; exit 1; }
  done
done
if [ -f "$DATA/SHA256SUMS" ]; then
  stage "verify checksums in $DATA"
  (cd "$DATA" && grep -E "\.($S|$T)\.gz\$" SHA256SUMS | sha256sum -c --quiet -) \
    || { echo "demo.sh: checksum mismatch in $DATA (see above): re-fetch those files" >&2; exit 1; }
fi

mkdir -p "$WORK/input"
cd "$WORK"
# the input mdn-prepare reads: the first TRAIN_LINES training pairs (0: all), valid and test as they are
for l in $S $T; do
  if [ "$TRAIN_LINES" -gt 0 ]; then
    rm -f input/train.$l.gz
    [ -s input/train.$l ] || { zcat "$DATA/train.$l.gz" | awk -v n="$TRAIN_LINES" 'NR <= n' > input/train.$l.tmp \
      && mv input/train.$l.tmp input/train.$l; }
  else
    rm -f input/train.$l; ln -sf "$DATA/train.$l.gz" input/train.$l.gz
  fi
  for split in val test_2016_flickr; do ln -sf "$DATA/$split.$l.gz" input/$split.$l.gz; done
done
# mdn-prepare's settings (the format of configs/TASK.sh). The demo trains on the MDN setting (one BPE model
# per language); the baseline setting, which mdn-prepare also writes, gets a single merge.
cat > config.sh <<CONFIG
# the demo: Multi30k En-De from $WORK/input
TASK=demo
SRC=$S
TGT=$T
SPLITS="train=train valid=val test=test_2016_flickr"
DOWNLOAD=none
BASELINE_JOINT=1
BASELINE_SRC_MERGES=1
BASELINE_TGT_MERGES=1
MDN_JOINT=0
MDN_SRC_MERGES=$SRC_MERGES
MDN_TGT_MERGES=$TGT_MERGES
MAX_LEN=250
MAX_RATIO=1.5
QUICK_TRAIN_LINES=1
QUICK_SRC_MERGES=1
QUICK_TGT_MERGES=1
CONFIG

stage "prepare (mdn-prepare: Moses tokenisation, BPE: $SRC_MERGES source / $TGT_MERGES target merges, binarise)"
mdn-prepare --config config.sh --work data --data input --workers "$THREADS" | sed 's/^/   /'

stage "train mdn_tiny (fairseq-train; log: $WORK/train.log)"
stop=(--max-epoch "$MAX_EPOCH"); [ "$MAX_UPDATE" -gt 0 ] && stop+=(--max-update "$MAX_UPDATE")
fairseq-train data/mdn/bin --user-dir "$REPO/mdn_fairseq" --arch mdn_tiny --task translation_mdn \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 400 \
  --criterion cross_entropy --dropout 0.1 --decoder-dropout 0 --max-tokens 4096 "${stop[@]}" \
  --save-dir mdn_tiny --no-epoch-checkpoints --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 2>&1 | tee train.log | grep -E "\| (train|valid) \|" || true
[ -s mdn_tiny/checkpoint_last.pt ] || { echo "demo.sh: training wrote no checkpoint (see $WORK/train.log)" >&2; exit 1; }

stage "translate test_2016_flickr (fairseq-generate, beam 4)"
fairseq-generate data/mdn/bin --user-dir "$REPO/mdn_fairseq" --task translation_mdn --path mdn_tiny/checkpoint_last.pt \
  --gen-subset test --beam 4 --batch-size 64 --remove-bpe > generate.log 2> generate.err
tail -n 1 generate.log

stage "export the model with its tokenisation (mdn-export -> $WORK/model)"
mdn-export --checkpoint mdn_tiny/checkpoint_last.pt --prepared data/mdn --out model | sed 's/^/   /'

stage "translate a few raw sentences (fairseq-interactive: tokenised as in training, output detokenised)"
zcat "$DATA/test_2016_flickr.$S.gz" | awk 'NR <= 3' > few.$S
fairseq-interactive model --user-dir "$REPO/mdn_fairseq" --task translation_mdn --path model/model.pt \
  --source-lang $S --target-lang $T --beam 4 --input few.$S 2> interactive.err > interactive.out \
  || { tail -n 20 interactive.err >&2; echo "demo.sh: fairseq-interactive failed (see $WORK/interactive.err)" >&2; exit 1; }
grep '^D-' interactive.out | cut -f3 > few.$T
paste -d '\n' few.$S few.$T | awk -v s=$S -v t=$T '{ print "  " (NR % 2 ? s : t) ": " $0 }'
stage "done"
