#!/usr/bin/env python3
"""Writes tests/fixtures/reference_embeddings.json: sentence-transformers' embeddings of a few
texts with all-MiniLM-L6-v2, which the Rust encoder must match to 1e-4.

Run once (needs `pip install -r benches/peers/requirements.txt` and `shopdesk models fetch`):
    python scripts/make_reference_vectors.py models/all-MiniLM-L6-v2
The module stack is the one in the model's modules.json: Transformer (max_seq_length 256),
mean Pooling, Normalize.
"""
import json
import sys

from sentence_transformers import SentenceTransformer, models

TEXTS = [
    "Where is my order?",
    "hi",
    "I want to cancel purchase 113542617735902 right now!!!",
    "The dress fits perfectly, but the zipper broke after two washes. Returning it.",
    "Können Sie mir bei meiner Rechnung helfen? 请帮我查一下订单 🙂",
    "a",
    # Longer than 128 tokens: the shipped tokenizer.json would cut it at 128, sentence-transformers
    # reads up to 256.
    " ".join(["I ordered a blue sweater and a pair of running shoes last week, but only the shoes arrived."] * 8),
    # Longer than 256 tokens: truncated at 256 by both.
    " ".join(["refund"] * 300),
]


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
    t = models.Transformer(path, max_seq_length=256)
    pool = models.Pooling(t.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[t, pool, models.Normalize()], device="cpu")
    vecs = st.encode(TEXTS, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    toks = [len(st.tokenizer(x, truncation=True, max_length=256)["input_ids"]) for x in TEXTS]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_with": "scripts/make_reference_vectors.py (sentence-transformers, CPU, float32)",
        "items": [
            {"text": x, "tokens": n, "vector": [round(float(v), 7) for v in vec]}
            for x, n, vec in zip(TEXTS, toks, vecs)
        ],
    }
    with open("tests/fixtures/reference_embeddings.json", "w") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print("wrote", len(TEXTS), "vectors; token counts", toks)


if __name__ == "__main__":
    main()
