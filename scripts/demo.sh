#!/usr/bin/env bash
# Train a tiny MDN (mdn_tiny) on Multi30k En-De and translate a few sentences, on CPU.
#
#   bash scripts/demo.sh [--data DIR] [--work DIR] [--quick]
#
# --data  folder with Multi30k task-1 raw text: {train,val,test_2016_flickr}.{en,de}.gz
#         (default: ../shared/data/multi30k next to this repository)
# --work  where tokenised text, BPE codes, binarised data and checkpoints go (default: work/demo)
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
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
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

mkdir -p "$WORK"/{tok,bpe}
cd "$WORK"
# produce OUT CMD...: write CMD's output to OUT through a temporary file; skip if OUT is there.
produce() { local out=$1; shift; [ -s "$out" ] && return 0; "$@" > "$out.tmp"; mv "$out.tmp" "$out"; }
take() { awk -v n="$([ "$1" = train ] && echo "$TRAIN_LINES" || echo 0)" 'n == 0 || NR <= n'; }
tokenise() { zcat "$DATA/$1.$2.gz" | take "$1" | sacremoses -q -l "$2" -j 1 tokenize; }
learn_bpe() { subword-nmt learn-bpe -s "$1" --input "$2" 2>> bpe/learn-bpe.log; }
merges() { if [ "$1" = $T ]; then echo "$TGT_MERGES"; else echo "$SRC_MERGES"; fi; }

stage "tokenise (sacremoses)"
for split in train val test_2016_flickr; do
  for l in $S $T; do produce tok/$split.$l tokenise $split $l; done
done

stage "BPE (subword-nmt): $SRC_MERGES source merges, $TGT_MERGES target merges"
for l in $S $T; do
  produce bpe/codes.$l learn_bpe "$(merges $l)" tok/train.$l
  for split in train val test_2016_flickr; do
    produce bpe/$split.$l subword-nmt apply-bpe -c bpe/codes.$l --input tok/$split.$l
  done
done

stage "binarise (fairseq-preprocess)"
if [ ! -s bin/test.$S-$T.$T.bin ]; then
  rm -rf bin
  fairseq-preprocess --source-lang $S --target-lang $T --trainpref bpe/train --validpref bpe/val \
    --testpref bpe/test_2016_flickr --destdir bin --workers "$THREADS" > preprocess.log
fi

stage "train mdn_tiny (fairseq-train; log: $WORK/train.log)"
stop=(--max-epoch "$MAX_EPOCH"); [ "$MAX_UPDATE" -gt 0 ] && stop+=(--max-update "$MAX_UPDATE")
fairseq-train bin --user-dir "$REPO/mdn_fairseq" --arch mdn_tiny --task translation \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 400 \
  --criterion cross_entropy --dropout 0.1 --decoder-dropout 0 --max-tokens 4096 "${stop[@]}" \
  --save-dir checkpoints --no-epoch-checkpoints --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 2>&1 | tee train.log | grep -E "\| (train|valid) \|" || true
[ -s checkpoints/checkpoint_last.pt ] || { echo "demo.sh: training wrote no checkpoint (see $WORK/train.log)" >&2; exit 1; }

stage "translate test_2016_flickr (fairseq-generate, beam 4)"
fairseq-generate bin --user-dir "$REPO/mdn_fairseq" --path checkpoints/checkpoint_last.pt --gen-subset test \
  --beam 4 --batch-size 64 --required-batch-size-multiple 1 --remove-bpe > generate.log 2> generate.err
tail -n 1 generate.log

stage "translate a few sentences (fairseq-interactive)"
zcat "$DATA/test_2016_flickr.$S.gz" | awk 'NR <= 3' > few.$S
fairseq-interactive bin --user-dir "$REPO/mdn_fairseq" --path checkpoints/checkpoint_last.pt \
  --source-lang $S --target-lang $T --tokenizer moses --bpe subword_nmt --bpe-codes bpe/codes.$S \
  --beam 4 --input few.$S 2> interactive.err | grep '^D-' | cut -f3 > few.$T
paste -d '\n' few.$S few.$T | awk -v s=$S -v t=$T '{ print "  " (NR % 2 ? s : t) ": " $0 }'
stage "done"
