#!/usr/bin/env python3
"""Batch-scoring peer for `shopdesk score`: the same job on the same file, in Python.

Reads a CSV/TSV of reviews, skips rows whose text is empty, embeds the text with the same encoder
(sentence-transformers/all-MiniLM-L6-v2, mean pooling, L2 norm, 256 tokens), applies shopdesk's
own trained sentiment head (models/heads/sentiment, a linear layer + softmax, read from its
safetensors), and writes every row back with `sentiment`, `sentiment_score` and `p_<class>`.
Windows of 1,024 rows, sorted by length inside the window, forward passes of 32: what shopdesk does.

Implementations (--impl):
  st        PyTorch sentence-transformers, fp32
  ort-fp32  onnxruntime fp32 (the encoder exported with torch.onnx)
  ort-int8  onnxruntime with dynamic int8 quantisation of that export

usage: score_peer.py MODEL_DIR HEAD_DIR INPUT OUTPUT --impl st [--threads 2] [--json OUT_JSONL]
"""
import argparse
import csv
import json
import os
import resource
import sys
import time

TEXT_COLUMNS = ["text", "review", "Review Text", "review_text", "content", "sentence", "verified_reviews"]
WINDOW = 1024
BATCH = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("head_dir")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--impl", default="ort-fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--onnx-dir", default="reports/bench/onnx")
    a = ap.parse_args()
    t_start = time.perf_counter()

    import numpy as np
    import torch
    from safetensors.numpy import load_file

    torch.set_num_threads(a.threads)
    manifest = json.load(open(os.path.join(a.head_dir, "manifest.json")))
    assert manifest["arch"]["type"] == "linear", "peer implements the linear head only"
    w = load_file(os.path.join(a.head_dir, "head.safetensors"))
    W, b = w["layer0.weight"], w["layer0.bias"]
    labels = manifest["labels"]

    from sentence_transformers import SentenceTransformer, models

    t = models.Transformer(a.model_dir, max_seq_length=256)
    st = SentenceTransformer(modules=[t, models.Pooling(384, pooling_mode="mean"), models.Normalize()],
                             device="cpu")
    tok = st.tokenizer

    if a.impl == "st":
        def embed(texts):
            with torch.inference_mode():
                return st.encode(texts, batch_size=BATCH)
    else:
        import onnxruntime as ort
        path = os.path.join(a.onnx_dir, "minilm.onnx" if a.impl == "ort-fp32" else "minilm-int8.onnx")
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run benches/peers/encoder_peers.py once (it exports it)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def embed(texts):
            out = []
            for s in range(0, len(texts), BATCH):
                enc = tok(texts[s:s + BATCH], padding=True, truncation=True, max_length=256, return_tensors="np")
                feeds = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
                h = sess.run(None, feeds)[0]
                m = feeds["attention_mask"][..., None].astype(np.float32)
                v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
                out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
            return np.concatenate(out)

    delim = "\t" if a.input.endswith((".tsv", ".tab")) else ","
    fin = open(a.input, newline="", encoding="utf-8-sig")
    fout = open(a.output, "w", newline="", encoding="utf-8")
    reader = csv.reader(fin, delimiter=delim)
    writer = csv.writer(fout)
    header = next(reader)
    col = next(header.index(c) for c in TEXT_COLUMNS if c in header)
    writer.writerow(header + ["sentiment", "sentiment_score"] + [f"p_{l}" for l in labels])
    rows = scored = bad = 0
    t0 = time.perf_counter()

    def flush(window):
        nonlocal scored
        texts = [r[col].strip() for r in window]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        e = embed([texts[i] for i in order])
        logits = (e @ W if W.shape[0] == e.shape[1] else e @ W.T) + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        probs = np.empty_like(p)
        probs[order] = p
        for r, pr in zip(window, probs):
            k = int(pr.argmax())
            writer.writerow(r + [labels[k], f"{pr[k]:.4f}"] + [f"{x:.4f}" for x in pr])
        scored += len(window)

    window = []
    for r in reader:
        rows += 1
        if len(r) <= col or not r[col].strip():
            bad += 1
            continue
        window.append(r)
        if len(window) == WINDOW:
            flush(window)
            window = []
    if window:
        flush(window)
    fout.close()
    secs = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {"impl": {"st": "PyTorch sentence-transformers (fp32)", "ort-fp32": "onnxruntime fp32",
                    "ort-int8": "onnxruntime int8 (dynamic quantisation)"}[a.impl],
           "rows": rows, "scored": scored, "bad": bad, "secs": secs, "rows_per_s": scored / secs,
           "wall_incl_load_s": time.perf_counter() - t_start, "peak_rss_mb": rss_mb, "threads": a.threads}
    print(json.dumps(res), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
