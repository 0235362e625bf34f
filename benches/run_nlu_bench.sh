#!/usr/bin/env bash
# NLU speed: shopdesk and its peers in one run, same inputs, same thread count.
#   bash benches/run_nlu_bench.sh            (THREADS=2 N=10000 by default)
# Writes reports/bench/encoder.jsonl and prints the markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHOPDESK_DATA_DIR:-../shared/data}"
REVIEWS="$DATA/womens-clothing-reviews/womens_clothing_reviews.csv"
THREADS="${THREADS:-2}"
N="${N:-10000}"
OUT=reports/bench
mkdir -p "$OUT"
rm -f "$OUT/encoder.jsonl"

cargo run --release -q -- models fetch
cargo build --release -q
cargo bench -q --bench encoder -- --threads "$THREADS" --n "$N" --texts "$REVIEWS" --json "$OUT/encoder.jsonl"

PY="${PEERS_PY:-.venv-peers/bin/python}"
if [ ! -x "$PY" ]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q -r benches/peers/requirements.txt
  PY=.venv-peers/bin/python
fi
"$PY" benches/peers/encoder_peers.py models/all-MiniLM-L6-v2 "$REVIEWS" "$OUT/encoder.jsonl" --threads "$THREADS" --n "$N"

# Peak RSS of a one-shot `classify` (process start, model load, one message).
RAYON_NUM_THREADS="$THREADS" /usr/bin/time -v ./target/release/shopdesk classify "where is my order?" \
  2> "$OUT/classify-time.txt" > /dev/null
rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$OUT/classify-time.txt")

python3 - "$OUT/encoder.jsonl" "$rss_kb" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"| implementation | short message p50 (ms) | p99 (ms) | reviews/s (batch 32) |")
print(f"|---|---:|---:|---:|")
for r in rows:
    print(f"| {r['impl']} | {r['short_p50_ms']:.2f} | {r['short_p99_ms']:.2f} | {r['reviews_per_s']:.1f} |")
meta = rows[0]
print()
print(f"threads {meta['threads']}; {meta['reviews']} reviews, mean {meta.get('reviews_mean_tokens', 0):.1f} tokens; "
      f"short message {meta.get('short_tokens', '?')} tokens; classify peak RSS {int(sys.argv[2]) / 1024:.0f} MB")
PY
