#!/usr/bin/env bash
# Translation speed of fairseq models side by side: mdn-bench with its arguments passed through.
#
#   bash scripts/benchmark.sh [mdn-bench arguments]
#
# With no arguments: the paper's CPU comparison (Table 4 layout) on all cores -- synthetic
# Transformer-base (32K/32K) vs MDN (22+1, 32K/10K), batch 64, beam 4, fixed output length 30,
# each with fairseq's SequenceGenerator and the fast generator, 3 repeats, with a module profile.
# `bash scripts/benchmark.sh --help` lists every option (checkpoints, --sweep, --device cuda ...).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -eq 0 ]; then
  set -- --synthetic transformer,mdn --repeats 3 --profile \
    --out-md "$REPO/work/bench/table4.md" --out-json "$REPO/work/bench/table4.json"
  mkdir -p "$REPO/work/bench"
fi
if command -v mdn-bench >/dev/null 2>&1; then
  exec mdn-bench "$@"
fi
exec python -m mdn_fairseq.cli.bench "$@"
