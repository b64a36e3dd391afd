"""A tokenizer from a name or a folder, offline: what ``tokenizer_name_or_path`` means in minift.

PEFT's prompt tuning hands ``tokenizer_name_or_path`` to transformers' AutoTokenizer, which may
download it. minift never reaches the network, so the name must be a tokenizer it can build on
this machine:

    "minift-char"           ``standard_tokenizer()``: the character tokenizer of minift's corpus,
                            of its tasks and of every base ``minift pretrain`` trains
    a WordPiece folder      vocab.txt (+ tokenizer_config.json): BERT's tokenizer, which
                            transformers' AutoTokenizer reads from the same folder to the same ids
    a minift model folder   pretraining.json (a base) or finetuned.json (a fine-tuned model):
                            the character tokenizer recorded there

Anything else (a hub name such as "gpt2", a folder holding none of these) is an error that names
the field and says what would do.
"""

from __future__ import annotations

import os
from pathlib import Path

from minift.data.tokenizer import CharTokenizer, standard_tokenizer
from minift.data.wordpiece import WordPieceTokenizer
from minift.errors import FileFormatError
from minift.files import read_json

__all__ = ["STANDARD_TOKENIZER_NAME", "tokenizer_from_name"]

STANDARD_TOKENIZER_NAME = "minift-char"
MODEL_FILES = ("pretraining.json", "finetuned.json")  # each records its model's tokenizer


def tokenizer_from_name(name_or_path, field: str = "tokenizer_name_or_path"):
    """The tokenizer ``name_or_path`` names (module docstring): a CharTokenizer or a
    WordPieceTokenizer, each with ``encode(text) -> ids``. An error names ``field``."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{field}: expected a name or a folder, got {name_or_path!r}")
    if name_or_path == STANDARD_TOKENIZER_NAME:
        return standard_tokenizer()
    folder = Path(name_or_path)
    if folder.is_dir():
        if (folder / "vocab.txt").exists():
            return WordPieceTokenizer.from_folder(folder)
        for name in MODEL_FILES:
            if (folder / name).exists():
                return _recorded_tokenizer(folder / name)
    raise ValueError(
        f"{field}: {str(name_or_path)!r} is no tokenizer minift can load offline (it never "
        f"downloads one); expected {STANDARD_TOKENIZER_NAME!r}, a folder holding vocab.txt (a "
        f"WordPiece tokenizer), or a minift model folder holding {' or '.join(MODEL_FILES)}"
    )


def _recorded_tokenizer(path: Path) -> CharTokenizer:
    info = read_json(path, "model description")
    recorded = info.get("tokenizer")
    if not isinstance(recorded, dict):
        message = "expected an object describing the tokenizer"
        raise FileFormatError(path, message, field="tokenizer")
    try:
        return CharTokenizer.from_dict(recorded)
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(path, f"{type(e).__name__}: {e}", field="tokenizer") from None
