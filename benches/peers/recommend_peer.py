"""Peer for the recommender bench: the `implicit` library's ALS on the same split, same metrics.

    python benches/peers/recommend_peer.py eval SPLIT_DIR --factors 64 --regularization 0.01 \
        --alpha 40 --iterations 15 --threads 2 [--k 10] [--json OUT]
    python benches/peers/recommend_peer.py speed TRIPLES.csv --factors 64 ... [--json OUT]

SPLIT_DIR holds train.csv and test.csv (user,item,weight) written by
`shopdesk recommend eval --write-split`. shopdesk's confidence is C = 1 + alpha*w; implicit's is
C = alpha*value, so implicit is given value = (1 + alpha*w) / alpha: the same objective. Metrics
are computed here with the same definitions as shopdesk's (src/recommend/eval.rs), not with
implicit's helpers: precision@k = hits/k, recall@k = hits/|test items|, NDCG@k with binary gains,
coverage = distinct recommended items / items; items seen in training are never recommended.
"""

import argparse
import json
import os
import sys
import time


def load(path):
    import csv

    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append((r["user"], r["item"], float(r["weight"])))
    return rows


def model(args):
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(
        factors=args.factors,
        regularization=args.regularization,
        alpha=args.alpha,
        iterations=args.iterations,
        num_threads=args.threads,
        random_state=args.seed,
        calculate_training_loss=False,
    )


def matrix(rows, users, items, alpha):
    import numpy as np
    import scipy.sparse as sp

    u = np.array([users[r[0]] for r in rows], dtype=np.int32)
    i = np.array([items[r[1]] for r in rows], dtype=np.int32)
    w = np.array([r[2] for r in rows], dtype=np.float32)
    m = sp.csr_matrix((w, (u, i)), shape=(len(users), len(items)), dtype=np.float32)
    m.sum_duplicates()
    m.data = (1.0 + alpha * m.data) / alpha
    return m


def evaluate(args):
    import numpy as np

    train = load(os.path.join(args.path, "train.csv"))
    test = load(os.path.join(args.path, "test.csv"))
    users, items = {}, {}
    for u, i, _ in train + test:
        users.setdefault(u, len(users))
        items.setdefault(i, len(items))
    ui = matrix(train, users, items, args.alpha)
    m = model(args)
    t = time.perf_counter()
    m.fit(ui, show_progress=False)
    secs = time.perf_counter() - t
    truth = {}
    for u, i, _ in test:
        truth.setdefault(users[u], set()).add(items[i])
    ids = np.array(sorted(truth), dtype=np.int32)
    rec, _ = m.recommend(ids, ui[ids], N=args.k, filter_already_liked_items=True)
    p = r = n = 0.0
    covered = set()
    for row, u in zip(rec, ids):
        top = [int(x) for x in row if x >= 0][: args.k]
        covered.update(top)
        gold = truth[int(u)]
        hits = 0
        dcg = 0.0
        for rank, i in enumerate(top):
            if i in gold:
                hits += 1
                dcg += 1.0 / np.log2(rank + 2)
        idcg = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(gold), args.k)))
        p += hits / args.k
        r += hits / len(gold)
        n += dcg / idcg if idcg > 0 else 0.0
    k = len(truth)
    out = {
        "name": "implicit ALS",
        "users": k,
        "precision_at_k": p / k,
        "recall_at_k": r / k,
        "ndcg_at_k": n / k,
        "coverage": len(covered) / len(items),
        "k": args.k,
        "train_seconds": secs,
        "implicit": __import__("implicit").__version__,
    }
    return out


def speed(args):
    import numpy as np
    import scipy.sparse as sp

    data = np.loadtxt(args.path, delimiter=",", skiprows=1, dtype=np.float32)
    u = data[:, 0].astype(np.int32)
    i = data[:, 1].astype(np.int32)
    w = data[:, 2]
    ui = sp.csr_matrix((w, (u, i)), shape=(u.max() + 1, i.max() + 1), dtype=np.float32)
    ui.sum_duplicates()
    ui.data = (1.0 + args.alpha * ui.data) / args.alpha
    m = model(args)
    t = time.perf_counter()
    m.fit(ui, show_progress=False)
    secs = time.perf_counter() - t
    return {
        "name": "implicit ALS",
        "users": ui.shape[0],
        "items": ui.shape[1],
        "interactions": int(ui.nnz),
        "train_seconds": secs,
        "implicit": __import__("implicit").__version__,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["eval", "speed"])
    ap.add_argument("path")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--regularization", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=40.0)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = evaluate(args) if args.mode == "eval" else speed(args)
    print(json.dumps(out))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"mode": args.mode, "path": args.path, **out}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
