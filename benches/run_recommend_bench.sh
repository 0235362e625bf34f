#!/usr/bin/env bash
# Recommender quality and speed: shopdesk and the `implicit` library in one run, same splits,
# same hyper-parameters, same thread count.
#   bash benches/run_recommend_bench.sh          (THREADS=2 by default)
# Writes reports/bench/recommend*.json(l) and prints the tables for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHOPDESK_DATA_DIR:-../shared/data}"
THREADS="${THREADS:-2}"
OUT=reports/bench
mkdir -p "$OUT"
rm -f "$OUT/recommend-peer.jsonl"
export RAYON_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

PY="${PEERS_PY:-.venv-peers/bin/python}"
if [ ! -x "$PY" ]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q -r benches/peers/requirements.txt
  PY=.venv-peers/bin/python
fi
cargo build --release -q
B=./target/release/shopdesk

# Quality: each dataset, two hyper-parameter settings, shopdesk then implicit on the split
# shopdesk wrote.
declare -A SETTINGS=(
  [default]="--factors 64 --regularization 0.01 --alpha 40 --iterations 15"
  [small]="--factors 8 --regularization 10 --alpha 5 --iterations 15"
)
for ds in movielens groceries; do
  case $ds in
    movielens) FILE="$DATA/movielens-latest-small/ratings.csv" ;;
    groceries) FILE="$DATA/groceries/groceries.csv" ;;
  esac
  for name in default small; do
    # shellcheck disable=SC2086
    $B recommend eval --interactions "$FILE" --preset $ds ${SETTINGS[$name]} \
      --write-split "$OUT/split-$ds" --json "$OUT/recommend-$ds-$name.json"
    # shellcheck disable=SC2086
    "$PY" benches/peers/recommend_peer.py eval "$OUT/split-$ds" ${SETTINGS[$name]} \
      --threads "$THREADS" --json "$OUT/recommend-peer.jsonl" > /dev/null
  done
done

# Speed: training on the synthetic 100k × 20k × 2M matrix, then serving latency.
cargo bench -q --bench recommend -- --write-triples "$OUT/synthetic.csv" --json "$OUT/recommend-speed.json"
"$PY" benches/peers/recommend_peer.py speed "$OUT/synthetic.csv" --factors 64 --regularization 0.01 \
  --alpha 40 --iterations 15 --threads "$THREADS" --json "$OUT/recommend-peer.jsonl"

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
peer = [json.loads(l) for l in open(os.path.join(out, "recommend-peer.jsonl"))]
evals = [p for p in peer if p["mode"] == "eval"]
print("| data | setting | model | P@10 | R@10 | NDCG@10 | coverage | train s |")
print("|---|---|---|---:|---:|---:|---:|---:|")
i = 0
for ds in ["movielens", "groceries"]:
    for name in ["default", "small"]:
        r = json.load(open(os.path.join(out, f"recommend-{ds}-{name}.json")))
        p = evals[i]; i += 1
        rows = [(m["name"], m, r["train_seconds"] if m["name"].startswith("shopdesk") else None) for m in r["results"]]
        rows.insert(1, (p["name"], p, p["train_seconds"]))
        for n, m, t in rows:
            ts = f"{t:.2f}" if t is not None else "-"
            print(f"| {ds} | {name} | {n} | {m['precision_at_k']:.4f} | {m['recall_at_k']:.4f} | {m['ndcg_at_k']:.4f} | {m['coverage']:.4f} | {ts} |")
s = json.load(open(os.path.join(out, "recommend-speed.json")))
sp = [p for p in peer if p["mode"] == "speed"][-1]
print()
print(f"synthetic {s['users']} users x {s['items']} items, {s['interactions']} interactions, {s['factors']} factors, {s['iterations']} iterations, {s['threads']} threads")
print(f"| shopdesk | {s['train_seconds']:.2f} s |")
print(f"| implicit {sp['implicit']} | {sp['train_seconds']:.2f} s |")
print()
for q in s["serving"]:
    print(f"| {q['query']} | {q['p50_us']:.0f} | {q['p99_us']:.0f} |")
PY
