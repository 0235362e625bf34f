"""Simulated shopping log for the demo shop (index/interactions.csv). NOT real data.

The demo needs a recommender that has something to learn from; no real log of our made-up shop
exists, so this script simulates one: 400 shoppers, each with two favourite categories (the
"personas" below), browse (view), add to cart and buy over 90 days. Recommendation quality is
measured on real public data only (docs/benchmarks.md), never on this file.

    python3 scripts/make_demo_interactions.py > index/interactions.csv
"""

import csv
import random
import sys

rng = random.Random(2026)
catalog = list(csv.DictReader(open("index/catalog.csv")))
by_cat = {}
for p in catalog:
    by_cat.setdefault(p["category"], []).append(p["id"])
# Which categories go together for a shopper (summer wardrobe, work wear, cosy, ...).
personas = [
    ("dresses", "shoes"),
    ("dresses", "accessories"),
    ("tops", "bottoms"),
    ("knitwear", "outerwear"),
    ("knitwear", "loungewear"),
    ("bottoms", "shoes"),
    ("outerwear", "accessories"),
    ("loungewear", "intimates"),
]
start = 1_767_225_600  # 2026-01-01 UTC
w = csv.writer(sys.stdout)
w.writerow(["user", "item", "event", "timestamp"])
for n in range(400):
    user = f"c{n:04d}"
    cats = rng.choice(personas)
    t = start + rng.randrange(0, 60 * 86_400)
    for _ in range(rng.randint(3, 14)):
        cat = cats[0] if rng.random() < 0.55 else cats[1] if rng.random() < 0.8 else rng.choice(list(by_cat))
        item = rng.choice(by_cat[cat])
        t += rng.randrange(600, 4 * 86_400)
        w.writerow([user, item, "view", t])
        if rng.random() < 0.35:
            t += rng.randrange(60, 3_600)
            w.writerow([user, item, "cart", t])
            if rng.random() < 0.6:
                t += rng.randrange(60, 3_600)
                w.writerow([user, item, "purchase", t])
