#!/usr/bin/env python3
"""Encoder speed peers for benches/encoder.rs, on the same inputs and thread count:

  * PyTorch / sentence-transformers (Transformer + mean Pooling + Normalize),
  * onnxruntime fp32 (the same BERT exported with torch.onnx), mean pooling in numpy,
  * onnxruntime int8 (dynamic quantisation of that export).

(a) one short message at a time: p50/p99 latency, tokenisation and pooling included;
(b) the first 10,000 non-empty `Review Text`s of womens-clothing-reviews at batch 32, sorted by
    length first (as sentence-transformers' encode does, and as shopdesk does), reviews/s.

usage: encoder_peers.py MODEL_DIR REVIEWS_CSV OUT_JSONL [--threads 2] [--n 10000]
"""
import argparse
import csv
import json
import os
import time

SHORT = "Hi, where is my order? It has not arrived yet."


def load_reviews(path, n):
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = (row.get("Review Text") or "").strip()
            if t:
                out.append(t)
            if len(out) == n:
                break
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]


def time_short(fn):
    for _ in range(20):
        fn([SHORT])
    lat = []
    for _ in range(300):
        t = time.perf_counter()
        fn([SHORT])
        lat.append((time.perf_counter() - t) * 1e3)
    return pct(lat, 0.5), pct(lat, 0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("reviews")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--only", default="torch,ort-fp32,ort-int8")
    a = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from sentence_transformers import SentenceTransformer, models

    reviews = load_reviews(a.reviews, a.n)
    results = []
    t = models.Transformer(a.model_dir, max_seq_length=256)
    st = SentenceTransformer(
        modules=[t, models.Pooling(384, pooling_mode="mean"), models.Normalize()], device="cpu"
    )
    tok = st.tokenizer
    only = a.only.split(",")

    if "torch" in only:
        with torch.inference_mode():
            p50, p99 = time_short(lambda x: st.encode(x, batch_size=32))
            t0 = time.perf_counter()
            st.encode(reviews, batch_size=32)
            rps = len(reviews) / (time.perf_counter() - t0)
        results.append({"impl": "PyTorch sentence-transformers (fp32)", "short_p50_ms": p50,
                        "short_p99_ms": p99, "reviews_per_s": rps})
        print(results[-1], flush=True)

    if "ort-fp32" in only or "ort-int8" in only:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        work = os.path.join(os.path.dirname(os.path.abspath(a.out)), "onnx")
        os.makedirs(work, exist_ok=True)
        fp32 = os.path.join(work, "minilm.onnx")
        int8 = os.path.join(work, "minilm-int8.onnx")
        if not os.path.exists(fp32):
            class Wrap(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.m(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

            bert = Wrap(t.auto_model.eval())
            enc = tok(["hello world"], return_tensors="pt")
            torch.onnx.export(
                bert,
                (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                fp32,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "b", 1: "t"} for k in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        if not os.path.exists(int8):
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)

        def runner(path):
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

            def embed(texts):
                enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
                feeds = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
                h = sess.run(None, feeds)[0]
                m = feeds["attention_mask"][..., None].astype(np.float32)
                v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
                return v / np.linalg.norm(v, axis=1, keepdims=True)

            return embed

        for name, path in [("ort-fp32", fp32), ("ort-int8", int8)]:
            if name not in only:
                continue
            embed = runner(path)
            # Same check the Rust side has: the fp32 export must agree with sentence-transformers.
            ref = st.encode([SHORT, reviews[0]])
            got = embed([SHORT, reviews[0]])
            diff = float(np.abs(ref - got).max())
            p50, p99 = time_short(embed)
            order = sorted(range(len(reviews)), key=lambda i: len(reviews[i]))
            t0 = time.perf_counter()
            for s in range(0, len(order), 32):
                embed([reviews[i] for i in order[s:s + 32]])
            rps = len(reviews) / (time.perf_counter() - t0)
            results.append({"impl": f"onnxruntime {name[4:]}", "short_p50_ms": p50, "short_p99_ms": p99,
                            "reviews_per_s": rps, "max_abs_diff_vs_st": diff})
            print(results[-1], flush=True)

    with open(a.out, "a") as f:
        for r in results:
            r.update({"threads": a.threads, "reviews": len(reviews)})
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
