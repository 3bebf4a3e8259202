#!/usr/bin/env bash
# The paper's ablations for one task: Table 2 (each structure trick alone) and Table 5 (the tricks one after
# another), or with --bpe-sweep Fig. 1's BLEU half (target BPE merges against BLEU and speed).
#
#   bash scripts/ablation.sh TASK [--quick] [--tables 2|5|2,5] [--bpe-sweep M1,M2,...] [--data DIR] [--work DIR]
#                                 [--results DIR] [--world-size N] [--threads N]
#
# The tricks are model flags on BASELINE_ARCH, one config variable each (configs/TASK.sh): ABLATION_SHALLOW_DECODER,
# ABLATION_ONE_HEAD, ABLATION_NO_FFN, ABLATION_LOW_RANK, ABLATION_DEEP_ENCODER.  Tables 2 and 5:
#  A0 check     every row's model through fairseq's parser and the architecture functions (mdn-report ablation
#               plan -> WORK/ablation/plan.json): flags that do not parse or combine fail here, before training
#  A1 reproduce scripts/reproduce.sh TASK (same arguments and work folder): data, Baseline, + BPE 10K (the
#               teacher), MDN; their models are rows here too.  --tables 2: only its data stage and + BPE 10K
#               (Table 2's Baseline), the only reproduce.sh model Table 2 uses
#  A2 train     the rows reproduce.sh did not train; rows that are the same model are trained once.  Table 2,
#               on the MDN BPE, label smoothing 0.1: shallow decoder, one head, no decoder FFN, low-rank output.
#               Table 5: Baseline, + merge operations, + shallow decoder, + pruning heads, + dropping FFN,
#               + output factorisation, + deep configuration (from scratch, label smoothing 0.1), + WD (mdn-init
#               from the teacher), - decoder dropout, - label smoothing (reproduce.sh's MDN when the config's
#               STUDENT_DATA is original)
#  A3 evaluate  as reproduce.sh: average of the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6
#  A4 benchmark every row's model in one mdn-bench run (test source, batch 64, beam 4, CPU, both generators;
#               WORK/ablation/bench/cpu.json)
#  A5 report    RESULTS/ablation.md and ablation.json (--tables 2 or 5 alone: ablation_table2.md/.json, _table5)
# --tables 2 or --tables 5 makes one table (default: 2,5, both), with its own plan and benchmark
# (WORK/ablation/plan_table2.json, bench_table2/): Table 2 trains only + BPE 10K and its four tricks; Table 5
# runs reproduce.sh whole (its Baseline, + BPE 10K and MDN) and its own rows.  A model trained for one table is
# reused by the other in the same work folder (one ablation.sh or reproduce.sh run per work folder at a time).
# --bpe-sweep M1,M2,... (instead of the tables): reproduce.sh's data (stage 1), then BASELINE_ARCH trained at each
# target merge count, the source BPE as the config's MDN BPE (one mdn-prepare config per count in WORK/bpe_sweep;
# the config's own count is reproduce.sh's + BPE 10K, reused or trained; nothing else of reproduce.sh is
# trained), BLEU and one mdn-bench run over all points -> RESULTS/bpe_sweep.csv, .md, .png
# (the plot needs matplotlib).  Default WORK: work/TASK (work/TASK-quick with --quick), shared with
# reproduce.sh; RESULTS: results/TASK (WORK/results with --quick).  Re-running skips every finished stage
# and resumes an interrupted training from its checkpoint_last.pt.
set -euo pipefail

SWEEP= SWEEP_SET=0 TABLES=2,5 TABLES_SET=0 ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --tables)
      [ $# -ge 2 ] && [[ $2 != -* ]] || { echo "ablation.sh: --tables needs 2, 5 or 2,5" >&2; exit 2; }
      [[ $2 =~ ^(2|5|2,5|5,2)$ ]] || { echo "ablation.sh: --tables takes 2, 5 or 2,5 (the paper's Tables 2 and" \
        "5), got '$2'" >&2; exit 2; }
      TABLES=$2 TABLES_SET=1; shift 2 ;;
    --bpe-sweep)
      [ $# -ge 2 ] && [[ $2 != -* ]] || { echo "ablation.sh: --bpe-sweep needs a comma list of target merge counts, e.g." \
        "2000,4000,6000,10000" >&2; exit 2; }
      SWEEP=$2 SWEEP_SET=1; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ $TABLES_SET = 0 ] || [ $SWEEP_SET = 0 ] || { echo "ablation.sh: --tables and --bpe-sweep make different results" \
  "(Tables 2, 5 or Fig. 1): run them apart" >&2; exit 2; }
set -- "${ARGS[@]}"
SCRIPT=ablation.sh
# shellcheck source=scripts/lib/recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"
[ $PEERS = 0 ] || die "--peers is reproduce.sh's (Tables 4 and 7); the ablation tables do not use the peers"
if [ $SWEEP_SET = 1 ]; then
  [[ $SWEEP =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--bpe-sweep takes a comma list of positive integers" \
    "(target merge counts, e.g. 2000,4000,6000,10000), got '$SWEEP'"
  IFS=, read -ra MERGES <<< "$SWEEP"
  dup=$(printf '%s\n' "${MERGES[@]}" | sort | uniq -d | head -n 1)
  [ -z "$dup" ] || die "--bpe-sweep $SWEEP names $dup twice"
  [ "$MDN_JOINT" = 0 ] || die "$CFG: --bpe-sweep varies the MDN BPE's target merges, so it needs MDN_JOINT=0"
  COMMAND+=" --bpe-sweep $SWEEP"
fi
# one table alone: its own results, plan and benchmark (SUFFIX _table2 or _table5), so runs for other tables in
# the same work folder keep theirs
case $TABLES in
  2|5) SUFFIX=_table$TABLES; COMMAND+=" --tables $TABLES" ;;
  *) SUFFIX= TABLES=2,5 ;;
esac
REPRODUCE=$(dirname "${BASH_SOURCE[0]}")/reproduce.sh
BENCH_ITEMS=()

bench_input() {  # bench_input PREPARED-BPE-DIR OUT: its test source (the first BENCH_LINES with --quick)
  mkdir -p "$(dirname "$2")"
  if [ "$BENCH_LINES" -gt 0 ]; then head -n "$BENCH_LINES" "$1/test.$SRC"; else cat "$1/test.$SRC"; fi > "$2"
}

bench_all() {  # bench_all DIR: WORK/KEY/checkpoint_avg.pt of every "KEY|DATA-BIN|INPUT" of BENCH_ITEMS in one
  local dir=$1 item key bin input newest args=() names=() avgs=()  # mdn-bench run, rows named KEY -> DIR/cpu.json
  for item in "${BENCH_ITEMS[@]}"; do
    IFS='|' read -r key bin input <<< "$item"
    args+=(--path "$WORK/$key/checkpoint_avg.pt" --name "$key" --data "$bin" --input "$input")
    names+=("$key") avgs+=("$WORK/$key/checkpoint_avg.pt")
  done
  newest=$(ls -t "${avgs[@]}" | head -n 1)
  if fresh "$dir/cpu.json" "$newest" && bench_covers "$dir/cpu.json" "${names[@]}"; then
    echo "   benchmark: done ($dir/cpu.json)"; return 0
  fi
  mdn-bench "${args[@]}" --batch-size 64 --beam 4 "${GEN_LEN[@]}" --repeats "$REPEATS" --threads "$THREADS" \
    --out-md "$dir/cpu.md" --out-json "$dir/cpu.json" 2> "$dir/cpu.err" \
    || { tail -n 20 "$dir/cpu.err" >&2; die "mdn-bench failed (see $dir/cpu.err)"; }
}

tables() {  # Tables 2 and 5
  local line owner key bpe data epochs wd model criterion rows bin plan=() keys=() MODEL CRIT INIT
  declare -A bpe_of
  local planfile=$WORK/ablation/plan$SUFFIX.json bench=$WORK/ablation/bench$SUFFIX
  mkdir -p "$bench"
  stage "A0 check every row's model (fairseq's parser, the architecture functions, the MDN checks)"
  line=$(mdn-report ablation plan --config "$CFG" --tables "$TABLES" --out "$planfile") \
    || die "the ablation rows cannot be trained with $CFG (see above); nothing was trained"
  mapfile -t plan <<< "$line"
  if [ "$TABLES" = 2 ]; then
    stage "A1 reproduce.sh's data (mdn-prepare) and + BPE 10K, Table 2's Baseline ($WORK/bpe10k; trained if missing)"
    prepare_data
    train_teacher
  else
    stage "A1 scripts/reproduce.sh ${ARGS[*]}"
    bash "$REPRODUCE" "${ARGS[@]}"
    TEACHER=$WORK/bpe10k/checkpoint_avg.pt
  fi
  stage "A2 train the rows that are not reproduce.sh's models (each model once; plan: $planfile)"
  for line in "${plan[@]}"; do
    IFS='|' read -r owner key bpe data epochs wd model criterion rows <<< "$line"
    keys+=("$key") && bpe_of[$key]=$bpe
    if [ "$owner" = reproduce.sh ]; then echo "   $key: $rows (reproduce.sh's model, trained in A1)"; continue; fi
    read -ra MODEL <<< "$model" && read -ra CRIT <<< "$criterion" && INIT=()
    echo "   $key: $rows: ${MODEL[*]}"
    if [ "$wd" = 1 ]; then
      wd_init "$WORK/${key}_init.pt" "${MODEL[@]}" && INIT=(--finetune-from-model "$WORK/${key}_init.pt")
    fi
    if [ "$data" = seqkd ]; then bin=$WORK/seqkd/bin; else bin=$D/$data/bin; fi
    train "$key" "$bin" "${!epochs}" "${MODEL[@]}" "${CRIT[@]}" "${INIT[@]}"
  done
  stage "A3 evaluate (average of the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6)"
  for key in "${keys[@]}"; do evaluate "$key" "$D/${bpe_of[$key]}/bin" "$D/raw"; done
  stage "A4 benchmark: the ${#keys[@]} models in one mdn-bench run (batch 64, beam 4, CPU)"
  for bpe in baseline mdn; do bench_input "$D/$bpe" "$bench/input.$bpe.$SRC"; done
  for key in "${keys[@]}"; do
    BENCH_ITEMS+=("$key|$D/${bpe_of[$key]}/bin|$bench/input.${bpe_of[$key]}.$SRC")
  done
  bench_all "$bench"
  stage "A5 report"
  mdn-report ablation table --work "$WORK" --config "$CFG" --tables "$TABLES" --plan "$planfile" \
    --out-md "$RESULTS/ablation$SUFFIX.md" --out-json "$RESULTS/ablation$SUFFIX.json" --command "$COMMAND"
  stage "done: $RESULTS/ablation$SUFFIX.md"
}

bpe_sweep() {  # Fig. 1: BASELINE_ARCH at each target merge count of MERGES
  local n key dir prepared raw current points=() keys=()
  declare -A prepared_of
  stage "S0 prepare (reproduce.sh's stage 1: mdn-prepare; $CFG)"
  prepare_data
  current=$([ $QUICK = 1 ] && echo "$QUICK_TGT_MERGES" || echo "$MDN_TGT_MERGES")
  stage "S1 one mdn-prepare config per target merge count (${MERGES[*]}; the config's own: $current)"
  mdn-report ablation sweep-configs --config "$CFG" --merges "$SWEEP" --current "$current" \
    --out-dir "$WORK/bpe_sweep"
  for n in "${MERGES[@]}"; do
    if [ "$n" = "$current" ]; then
      key=bpe10k prepared=$D/mdn
      stage "S2 $n target merges: the config's own, reproduce.sh's + BPE 10K ($WORK/bpe10k; trained here if missing)"
      train_teacher
    else
      key=sweep_tgt$n dir=$WORK/bpe_sweep/tgt$n prepared=$WORK/bpe_sweep/tgt$n/data/mdn
      stage "S2 $n target merges: mdn-prepare, then $BASELINE_ARCH on this BPE"
      mdn-prepare --config "$dir/config.sh" --work "$dir/data" ${DATA_ARG:+--data "$DATA_ARG"} \
        $([ $QUICK = 1 ] && echo --quick) --workers "$THREADS"
      train "$key" "$prepared/bin" "$MAX_EPOCH" "${BASE[@]}"
    fi
    keys+=("$key") points+=(--point "$n=$key") && prepared_of[$key]=$prepared
  done
  stage "S3 evaluate (average of the last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6)"
  for key in "${keys[@]}"; do evaluate "$key" "${prepared_of[$key]}/bin" "$(dirname "${prepared_of[$key]}")/raw"; done
  stage "S4 benchmark: the ${#keys[@]} models in one mdn-bench run (batch 64, beam 4, CPU)"
  for key in "${keys[@]}"; do
    bench_input "${prepared_of[$key]}" "$WORK/bpe_sweep/bench/input.$key.$SRC"
    BENCH_ITEMS+=("$key|${prepared_of[$key]}/bin|$WORK/bpe_sweep/bench/input.$key.$SRC")
  done
  bench_all "$WORK/bpe_sweep/bench"
  stage "S5 report"
  mdn-report ablation sweep --work "$WORK" "${points[@]}" --out-csv "$RESULTS/bpe_sweep.csv" \
    --out-md "$RESULTS/bpe_sweep.md" --out-png "$RESULTS/bpe_sweep.png" --command "$COMMAND"
  stage "done: $RESULTS/bpe_sweep.csv"
}

if [ $SWEEP_SET = 1 ]; then bpe_sweep; else tables; fi
