# Shared by scripts/reproduce.sh and scripts/training_strategies.sh (sourced, not run): arguments,
# the task's config, the work folders, and the stage functions train / average / evaluate.
# The sourcing script sets SCRIPT (its name, for messages); its help text is its header comment (after the shebang).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
die() { echo "$SCRIPT: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; }  # the header comment
[ $# -ge 1 ] || { usage >&2; exit 2; }
case $1 in -h|--help) usage; exit 0 ;; esac
TASK=$1; shift
CFG=$REPO/mdn_fairseq/configs/$TASK.sh  # the shipped task configs (package data; configs/ links here)
if [ ! -f "$CFG" ]; then
  known=$(cd "$REPO/mdn_fairseq/configs" && ls *.sh | sed 's/\.sh$//' | paste -sd ' ')
  die "unknown task '$TASK' (known: $known)"
fi
QUICK=0 PEERS=0 DATA_ARG= WORK= RESULTS= WORLD=1 THREADS=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; shift ;;
    --peers) PEERS=1; shift ;;
    --data) DATA_ARG=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --world-size) WORLD=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $WORLD =~ ^[1-9][0-9]*$ ]] || die "--world-size takes a positive integer, got '$WORLD'"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads takes a positive integer, got '$THREADS'"
# shellcheck source=/dev/null
source "$CFG"
[ -n "${BASELINE_ARCH:-}" ] || die "$CFG: BASELINE_ARCH is missing (the Baseline's architecture, e.g." \
  "BASELINE_ARCH=mdn_transformer_small; every recipe trains it)"
if [ $QUICK = 1 ]; then
  WORK=${WORK:-$REPO/work/$TASK-quick}; RESULTS=${RESULTS:-$WORK/results}
  MAX_EPOCH=1 STUDENT_MAX_EPOCH=1 SEQKD_MAX_EPOCH=1 MAX_UPDATE=$QUICK_MAX_UPDATE WARMUP=10 REPEATS=1 BENCH_LINES=64
  GEN_LEN=(--max-len-a 1.2 --max-len-b 10)  # models this barely trained never end a sentence: not 200 tokens each
else
  WORK=${WORK:-$REPO/work/$TASK}; RESULTS=${RESULTS:-$REPO/results/$TASK}
  MAX_UPDATE=0 REPEATS=3 BENCH_LINES=0 GEN_LEN=()
fi
GPU=$(python -c "import torch; print(torch.cuda.device_count())")
# --world-size N > 1: fairseq's distributed data parallel.  With GPUs fairseq spawns one process per GPU.
# Without CUDA we start the N processes (train_ranks), with the flags fairseq's DDP needs on CPU:
#   --ddp-backend legacy_ddp --distributed-backend gloo --distributed-world-size N --distributed-no-spawn
#   --device-id 0 --distributed-init-method tcp://127.0.0.1:PORT --distributed-rank R   (R = 0..N-1)
# each with --threads/N threads; rank 0 logs to WORK/NAME/train.log, rank R to WORK/NAME/train.rankR.log.
if [ "$WORLD" -gt 1 ] && [ "$GPU" -gt 0 ] && [ "$WORLD" -gt "$GPU" ]; then
  die "--world-size $WORLD needs $WORLD GPUs on this node, found $GPU"
elif [ "$WORLD" -gt "$THREADS" ] && [ "$GPU" = 0 ]; then
  die "--world-size $WORLD needs $WORLD GPUs, or without CUDA $WORLD CPU threads (one process per rank): pass --threads $WORLD or more (now $THREADS)"
fi
mkdir -p "$WORK" "$RESULTS"
WORK=$(cd "$WORK" && pwd) RESULTS=$(cd "$RESULTS" && pwd)
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
COMMAND="bash scripts/$SCRIPT $TASK"; [ $QUICK = 1 ] && COMMAND+=" --quick"; [ $PEERS = 1 ] && COMMAND+=" --peers"
START=$(date +%s)
stage() { echo "== [$TASK $(( $(date +%s) - START ))s] $*"; }
fresh() { [ -s "$1" ] && { [ -z "${2:-}" ] || [ ! "$2" -nt "$1" ]; }; }   # fresh OUT [INPUT]: OUT exists, not older
D=$WORK/data

# the settings shared by every training (the config's deep-model setup: Adam, lr, warm-up)
COMMON=(--user-dir "$REPO/mdn_fairseq" --task translation_mdn --optimizer adam --adam-betas '(0.9, 0.98)'
        --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --dropout "$DROPOUT"
        --max-tokens "$MAX_TOKENS" --keep-last-epochs 5 --seed 1 --num-workers 0
        --log-format simple --log-interval 100 --source-lang "$SRC" --target-lang "$TGT")
[ "$MAX_UPDATE" -gt 0 ] && COMMON+=(--max-update "$MAX_UPDATE")
[ "$GPU" -gt 0 ] && COMMON+=(--fp16) || COMMON+=(--cpu)
[ "$WORLD" -gt 1 ] && COMMON+=(--distributed-world-size "$WORLD")
CPU_RANKS=0  # 1: we start the --world-size processes (no CUDA)
[ "$WORLD" -gt 1 ] && [ "$GPU" = 0 ] && CPU_RANKS=1 \
  && COMMON+=(--ddp-backend legacy_ddp --distributed-backend gloo --distributed-no-spawn --device-id 0)
# shellcheck disable=SC2206
[ -n "${EXTRA_TRAIN_ARGS:-}" ] && COMMON+=($EXTRA_TRAIN_ARGS)

prepare_data() {  # stage 1: mdn-prepare (Moses, both BPEs, the length/ratio filter, fairseq-preprocess) -> WORK/data
  mdn-prepare --config "$CFG" --work "$D" ${DATA_ARG:+--data "$DATA_ARG"} $([ $QUICK = 1 ] && echo --quick) \
    --workers "$THREADS"
}

# the Baseline's training (BASELINE_ARCH, label smoothing 0.1); on the MDN BPE it is "+ BPE 10K", the teacher
BASE=(--arch "$BASELINE_ARCH" --criterion label_smoothed_cross_entropy --label-smoothing 0.1)
train_teacher() {  # "+ BPE 10K" (WORK/bpe10k) trained and averaged; TEACHER: its checkpoint_avg.pt
  train bpe10k "$D/mdn/bin" "$MAX_EPOCH" "${BASE[@]}"
  average bpe10k
  TEACHER=$WORK/bpe10k/checkpoint_avg.pt
}

train() {  # train NAME DATA-BIN EPOCHS ARGS...
  local name=$1 data=$2 epochs=$3; shift 3
  local dir=$WORK/$name
  if mdn-report done "$dir/checkpoint_last.pt" --max-epoch "$epochs" --max-update "$MAX_UPDATE"; then
    echo "   $name: trained ($dir/checkpoint_last.pt)"; return 0
  fi
  mkdir -p "$dir"
  [ -s "$dir/checkpoint_last.pt" ] && echo "   $name: resuming from $dir/checkpoint_last.pt"
  echo "   $name: fairseq-train (full log: $dir/train.log)"
  train_ranks "$dir" "$data" "${COMMON[@]}" --save-dir "$dir" --max-epoch "$epochs" "$@" 2>&1 \
    | tee -a "$dir/train.log" | grep --line-buffered -E "\| (train|valid) \||num_updates=[0-9]*00," || true
  mdn-report done "$dir/checkpoint_last.pt" --max-epoch "$epochs" --max-update "$MAX_UPDATE" \
    || die "training $name did not finish (see $dir/train.log)"
}

train_ranks() {  # train_ranks DIR ARGS...: fairseq-train ARGS; on CPU with --world-size N > 1, N processes
  local dir=$1 port rank rc=0 pids=(); shift
  if [ $CPU_RANKS = 0 ]; then fairseq-train "$@"; return; fi
  port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  for ((rank = 1; rank < WORLD; rank++)); do
    OMP_NUM_THREADS=$((THREADS / WORLD)) fairseq-train "$@" --distributed-init-method "tcp://127.0.0.1:$port" \
      --distributed-rank "$rank" >> "$dir/train.rank$rank.log" 2>&1 &
    pids+=($!)
  done
  OMP_NUM_THREADS=$((THREADS / WORLD)) fairseq-train "$@" --distributed-init-method "tcp://127.0.0.1:$port" \
    --distributed-rank 0 || rc=$?
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  return "$rc"
}

average() {  # average NAME: the mean of the last 5 epoch checkpoints
  local dir=$WORK/$1
  fresh "$dir/checkpoint_avg.pt" "$dir/checkpoint_last.pt" && return 0
  if compgen -G "$dir/checkpoint[0-9]*.pt" > /dev/null; then
    mdn-average --inputs "$dir" --last 5 --output "$dir/checkpoint_avg.pt"
  else  # a --max-update stop inside the first epoch (--quick) leaves only checkpoint_last.pt
    mdn-average --inputs "$dir/checkpoint_last.pt" --output "$dir/checkpoint_avg.pt"
  fi
}

# evaluate NAME DATA-BIN RAW-DIR: the averaged model on valid and on every test set mdn-prepare prepared
# (RAW-DIR/../prepare.json: subsets test, test1, ...), beam 4: WORK/NAME/generate.SUBSET.txt, scores.SUBSET.json
# (a set recorded missing is skipped with a note; the results table marks it); then the model folder
declare -A TEST_SETS=()  # prepared folder -> `mdn-report test-sets` lines, listed once per recipe run
evaluate() {
  local name=$1 data=$2 raw=$3 dir=$WORK/$1 prepared split setname state i refs
  local subsets=(valid) labels=(valid)
  prepared=$(dirname "$raw")
  average "$name"
  if [ -z "${TEST_SETS[$prepared]+set}" ]; then
    TEST_SETS[$prepared]=$(mdn-report test-sets --prepared "$prepared") || die "cannot list the test sets (see above)"
  fi
  while read -r split setname state; do
    if [ "$state" = present ]; then subsets+=("$split") labels+=("$split ($setname)")
    else echo "   $name $split ($setname): missing (not prepared, see $(dirname "$raw")/prepare.json)"; fi
  done <<< "${TEST_SETS[$prepared]}"
  for i in "${!subsets[@]}"; do
    split=${subsets[$i]}
    # scores newer than the model and the binarised subset (a test set prepared again is scored again)
    fresh "$dir/scores.$split.json" "$dir/checkpoint_avg.pt" \
      && fresh "$dir/scores.$split.json" "$data/$split.$SRC-$TGT.$SRC.bin" && continue
    fairseq-generate "$data" --user-dir "$REPO/mdn_fairseq" --task translation_mdn --path "$dir/checkpoint_avg.pt" \
      --gen-subset "$split" \
      --source-lang "$SRC" --target-lang "$TGT" --beam 4 --batch-size 64 --lenpen 0.6 \
      --required-batch-size-multiple 1 "${GEN_LEN[@]}" --remove-bpe $([ "$GPU" -gt 0 ] && echo --fp16 || echo --cpu) \
      > "$dir/generate.$split.txt" 2> "$dir/generate.$split.err" < /dev/null \
      || { tail -n 20 "$dir/generate.$split.err" >&2; die "fairseq-generate failed for $name ($split)"; }
    refs=(--ref "$raw/$split.$TGT")
    for r in "$raw/$split.$TGT".ref*; do [ -e "$r" ] && refs+=(--ref "$r"); done
    echo -n "   $name ${labels[$i]}: "
    mdn-report score --generate "$dir/generate.$split.txt" "${refs[@]}" --lang "$TGT" \
      --out "$dir/scores.$split.json" --detok-out "$dir/hyp.$split.detok.$TGT"
  done
  export_model "$name" "$data"
}

# export_model NAME DATA-BIN: WORK/models/NAME, the averaged model as a folder that translates raw text tokenised
# as mdn-prepare did (mdn-export; DATA-BIN's parent is the mdn-prepare BPE folder: codes, dictionaries)
export_model() {
  local name=$1 out=$WORK/models/$1
  fresh "$out/model.pt" "$WORK/$name/checkpoint_avg.pt" && return 0
  mdn-export --checkpoint "$WORK/$name/checkpoint_avg.pt" --prepared "$(dirname "$2")" --out "$out" > /dev/null \
    || die "mdn-export failed for $name (see above)"
  echo "   $name: model folder $out (fairseq-interactive $out --user-dir mdn_fairseq --task translation_mdn" \
    "--path $out/model.pt -s $SRC -t $TGT)"
}

seqkd_data() {  # sequence-level KD data from the teacher: WORK/seqkd/bin (original + distilled pairs)
  mdn-seqkd --teacher "$TEACHER" --data "$D/mdn/bin" --out "$WORK/seqkd" -s "$SRC" -t "$TGT" --beam 4 \
    --batch-size 64 --with-original $([ "$GPU" -gt 0 ] && echo --fp16 || echo --cpu) | grep -v "^mdn-seqkd: chunk" || true
  [ -s "$WORK/seqkd/bin/dict.$TGT.txt" ] || die "mdn-seqkd wrote no data (see above)"
}

wd_init() {  # wd_init [OUT --arch ARCH FLAGS...]: a student initialised from the teacher (weight distillation);
  local out=${1:-$WORK/mdn_init.pt}  # default: WORK/mdn_init.pt, --arch STUDENT_ARCH
  [ $# -gt 0 ] && shift
  [ $# -gt 0 ] || set -- --arch "$STUDENT_ARCH"
  fresh "$out" "$TEACHER" && return 0
  mdn-init --teacher "$TEACHER" "$@" --data "$D/mdn/bin" -s "$SRC" -t "$TGT" \
    --out "$out" --wd-head index --wd-head-index 0
}

# The rows of the results table: KEY -> name (mdn-bench --name, the report's System column) and BPE setting.
# --peers adds the paper's peers (Table 4: AAN, SAN, CAN, trained as the Baseline) and Table 7's "+ Ours" rows
# (the MDN student's recipe on AAN and CAN); the config names their models: KEY_ARCH and KEY_ARGS (model flags),
# e.g. AAN_ARCH=aan_tiny, SAN_ARGS="--decoder-layers 2 ...", AAN_MDN_ARCH, CAN_MDN_ARGS.
declare -A ROW_NAME=([baseline]=Baseline [bpe10k]="+ BPE 10K" [mdn]=MDN [aan]=AAN [san]=SAN [can]=CAN
                     [aan_mdn]="AAN + Ours" [can_mdn]="CAN + Ours")
declare -A ROW_BPE=([baseline]=baseline [bpe10k]=mdn [mdn]=mdn [aan]=baseline [san]=baseline [can]=baseline
                    [aan_mdn]=mdn [can_mdn]=mdn)
PEER_KEYS=(aan san can) OURS_KEYS=(aan_mdn can_mdn)
ROWS=(baseline bpe10k mdn); [ $PEERS = 1 ] && ROWS+=("${PEER_KEYS[@]}" "${OURS_KEYS[@]}")

model_of() {  # model_of KEY: MODEL=(--arch ARCH FLAGS...) from the config's KEY_ARCH / KEY_ARGS
  local var=${1^^}_ARCH args=${1^^}_ARGS
  [ -n "${!var:-}" ] || die "$CFG: --peers needs $var (the architecture of the ${ROW_NAME[$1]} row) and" \
    "optionally ${1^^}_ARGS (its model flags)"
  # shellcheck disable=SC2206
  MODEL=(--arch "${!var}" ${!args:-})
}

train_peer() {  # train_peer KEY: a peer trained exactly as the Baseline (baseline BPE, label smoothing 0.1)
  model_of "$1"
  train "$1" "$D/baseline/bin" "$MAX_EPOCH" "${MODEL[@]}" --criterion label_smoothed_cross_entropy \
    --label-smoothing 0.1
}

train_ours() {  # train_ours KEY: "+ Ours", the MDN row's recipe (WD init, STUDENT_DATA, NLL, decoder dropout 0)
  model_of "$1"
  wd_init "$WORK/$1_init.pt" "${MODEL[@]}"
  train "$1" "$STUDENT_BIN" "$STUDENT_MAX_EPOCH" "${MODEL[@]}" --criterion cross_entropy --decoder-dropout 0 \
    --finetune-from-model "$WORK/$1_init.pt"
}

bench_covers() {  # bench_covers JSON NAME...: the mdn-bench output has rows of every named model
  python -c 'import json, sys; rows = json.load(open(sys.argv[1]))["rows"]
sys.exit(0 if set(sys.argv[2:]) <= {r["model"] for r in rows} else 1)' "$@"
}

case ${STUDENT_DATA:-} in
  original|original+distilled) ;;
  *) die "$CFG: STUDENT_DATA must be original or original+distilled, got '${STUDENT_DATA:-}'" ;;
esac
if [ $PEERS = 1 ]; then  # fail before any work when the config lacks a row's model
  for key in "${PEER_KEYS[@]}" "${OURS_KEYS[@]}"; do model_of "$key"; done
fi
