#!/usr/bin/env bash
# Batch scoring: `shopdesk score` and Python peers doing the same job, in one run.
#   bash benches/run_score_bench.sh          THREADS=2 N=10000; PEERS_PY=… to reuse a venv
#   SETS=womens bash benches/run_score_bench.sh    one input set only (womens, zh)
#   BIG=1 [SKIP_THROUGHPUT=1] bash benches/run_score_bench.sh    also peak RSS on a 1,000,000-row file (long: ~1.5 h on 2 cores)
# Inputs are real rows from ../shared/data: the first N non-empty reviews of womens-clothing-reviews
# (English) and of zh-shopping-reviews (Chinese). The big file repeats amazon-alexa-reviews' rows
# (3,150 real rows × 318) because no real review file here has a million rows.
# Writes reports/bench/score.jsonl and prints the markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHOPDESK_DATA_DIR:-../shared/data}"
THREADS="${THREADS:-2}"
N="${N:-10000}"
OUT=reports/bench/score
mkdir -p "$OUT"
JSONL=reports/bench/score.jsonl
[ "${SKIP_THROUGHPUT:-0}" = 1 ] || rm -f "$JSONL"

cargo run --release -q -- models fetch
cargo build --release -q
BIN=./target/release/shopdesk

PY="${PEERS_PY:-.venv-peers/bin/python}"
if [ ! -x "$PY" ]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q -r benches/peers/requirements.txt
  PY=.venv-peers/bin/python
fi
if [ ! -f reports/bench/onnx/minilm-int8.onnx ]; then
  "$PY" benches/peers/encoder_peers.py models/all-MiniLM-L6-v2 \
    "$DATA/womens-clothing-reviews/womens_clothing_reviews.csv" reports/bench/encoder.jsonl --n 50
fi

python3 - "$DATA" "$OUT" "$N" <<'PY'
import csv, sys
data, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, path, col, delim in [
    ("womens", f"{data}/womens-clothing-reviews/womens_clothing_reviews.csv", "Review Text", ","),
    ("zh", f"{data}/zh-shopping-reviews/online_shopping_10_cats.csv", "review", ","),
]:
    with open(path, newline="", encoding="utf-8-sig") as f, open(f"{out}/{name}-{n}.csv", "w", newline="", encoding="utf-8") as g:
        r = csv.DictReader(f, delimiter=delim)
        w = csv.DictWriter(g, fieldnames=r.fieldnames)
        w.writeheader()
        k = 0
        for row in r:
            if (row.get(col) or "").strip():
                w.writerow(row)
                k += 1
                if k == n:
                    break
PY

run_shopdesk() { # name input
  local name=$1 input=$2
  RAYON_NUM_THREADS="$THREADS" /usr/bin/time -v "$BIN" score "$input" -o "$OUT/$name-shopdesk.csv" \
    2> "$OUT/$name-shopdesk.log"
  python3 - "$OUT/$name-shopdesk.log" "$name" "$THREADS" >> "$JSONL" <<'PY'
import json, re, sys
log = open(sys.argv[1]).read()
m = re.search(r"scored (\d+) rows \((\d+) bad.*?in ([\d.]+) s", log)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log).group(1).split(":")
wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
scored, secs = int(m.group(1)), float(m.group(3))
print(json.dumps({"data": sys.argv[2], "impl": "shopdesk score (bf16)", "scored": scored,
                  "bad": int(m.group(2)), "secs": secs, "rows_per_s": scored / secs,
                  "wall_incl_load_s": wall, "peak_rss_mb": rss / 1024, "threads": int(sys.argv[3])}))
PY
  tail -1 "$JSONL"
}

for name in $([ "${SKIP_THROUGHPUT:-0}" = 1 ] || echo "${SETS:-womens zh}"); do
  input="$OUT/$name-$N.csv"
  run_shopdesk "$name" "$input"
  for impl in st ort-fp32 ort-int8; do
    "$PY" benches/peers/score_peer.py models/all-MiniLM-L6-v2 models/heads/sentiment "$input" \
      "$OUT/$name-$impl.csv" --impl "$impl" --threads "$THREADS" --json "$OUT/peer.jsonl.tmp"
    python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); r['data']=sys.argv[2]; print(json.dumps(r))" \
      "$OUT/peer.jsonl.tmp" "$name" >> "$JSONL"
  done
done
rm -f "$OUT/peer.jsonl.tmp"

if [ "${BIG:-0}" = 1 ]; then
  python3 - "$DATA" "$OUT/alexa-1m.tsv" <<'PY'
import sys
lines = open(f"{sys.argv[1]}/amazon-alexa-reviews/amazon_alexa.tsv", encoding="utf-8-sig").read().splitlines()
head, rows = lines[0], lines[1:]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write(head + "\n")
    k = 0
    while k < 1_000_000:
        for r in rows:
            f.write(r + "\n")
            k += 1
    print(f"{k} rows", file=sys.stderr)
PY
  # RSS over time, to show it stays flat (sampled every 10 s).
  RAYON_NUM_THREADS="$THREADS" /usr/bin/time -v "$BIN" score "$OUT/alexa-1m.tsv" -o "$OUT/alexa-1m-scored.tsv" \
    --group-by variation --report "$OUT/alexa-1m-report" 2> "$OUT/alexa-1m.log" &
  pid=$!
  : > "$OUT/alexa-1m-rss.txt"
  while kill -0 $pid 2>/dev/null; do
    child=$(pgrep -P $pid shopdesk || true)
    [ -n "$child" ] && echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$child/status 2>/dev/null) $(wc -l < "$OUT/alexa-1m-scored.tsv" 2>/dev/null)" >> "$OUT/alexa-1m-rss.txt"
    sleep 10
  done
  wait $pid
  run_big=$(grep -E "Maximum resident|scored" "$OUT/alexa-1m.log")
  echo "$run_big"
fi

python3 - "$JSONL" "$OUT" "$N" <<'PY'
import csv, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, n = sys.argv[2], sys.argv[3]
print("| data | implementation | reviews/s | shopdesk ÷ this | wall incl. load (s) | peak RSS (MB) | labels equal to shopdesk's |")
print("|---|---|---:|---:|---:|---:|---:|")
key = {"shopdesk score (bf16)": "shopdesk", "PyTorch sentence-transformers (fp32)": "st",
       "onnxruntime fp32": "ort-fp32", "onnxruntime int8 (dynamic quantisation)": "ort-int8"}
for r in rows:
    base = next(x for x in rows if x["data"] == r["data"] and x["impl"].startswith("shopdesk"))
    def labels(name):
        with open(f"{out}/{r['data']}-{name}.csv", newline="", encoding="utf-8") as f:
            return [row["sentiment"] for row in csv.DictReader(f)]
    a, b = labels("shopdesk"), labels(key[r["impl"]])
    agree = sum(x == y for x, y in zip(a, b)) / max(len(a), 1) if len(a) == len(b) else float("nan")
    print(f"| {r['data']} | {r['impl']} | {r['rows_per_s']:.1f} | {base['rows_per_s'] / r['rows_per_s']:.2f} | "
          f"{r['wall_incl_load_s']:.1f} | {r['peak_rss_mb']:.0f} | {100 * agree:.1f}% |")
print(f"\n{n} rows each; threads {rows[0]['threads']}")
PY
