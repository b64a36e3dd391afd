"""WordPiece: BERT's tokenizer in pure Python, from a ``vocab.txt`` (one token a line, id = line).

    text ─ normalise ─ pre-tokenise ─ WordPiece ─ [CLS] … [SEP]

1. Normalise (Hugging Face's BertNormalizer, in its order): drop NUL, U+FFFD and control
   characters; turn every whitespace character into a space; put spaces around CJK ideographs
   (each becomes a word of its own); strip accents (Unicode NFD, then drop the non-spacing marks,
   category Mn: "café" → "cafe"); lower-case. An uncased model strips accents whenever it
   lower-cases, unless its config says otherwise.
2. Pre-tokenise (BertPreTokenizer): split on whitespace, and make every punctuation character a
   word of its own (ASCII punctuation, or any Unicode category P*): "don't!" → don ' t !
3. WordPiece, per word, greedy LONGEST-MATCH-FIRST: take the longest prefix of the word that is
   in the vocabulary, then the longest piece of the rest that is in it as "##piece", and so on:

       "unaffable" → un ##aff ##able

   If some rest has no piece at all, the WHOLE word becomes [UNK] (not just the rest); so does a
   word longer than ``max_input_chars_per_word`` (100) characters.
4. Wrap: [CLS] pieces [SEP]; ``max_length`` cuts the pieces so that the whole fits.

``decode`` goes back as the ``tokenizers`` library's WordPiece decoder does: special tokens
dropped, "##" pieces glued to the one before, every other piece after a space, and the decoder's
cleanup (" ." → "." and its other rules). Lower-casing and accents are lost for good, so
decode(encode(text)) is the normalised text, with spaces around punctuation closed up.

The tests compare with the ``tokenizer.json`` that ships with all-MiniLM-L6-v2, the definition
the Rust ``tokenizers`` library runs, and with ids it produced. Where the two could differ, minift
follows that library rather than the older Python BertTokenizer: "other" characters are Cc, Cf,
Co, Cs (an unassigned code point stays, and ends as [UNK]); lower-casing goes character by
character (no final sigma); its CJK ranges, bound for bound. What still differs: the
characters Unicode added after the library's tables were made (about 500 code points of
recent scripts and marks, none in Latin, Greek, Cyrillic or the CJK blocks above), which Python's
``unicodedata`` knows and the library takes for unassigned.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minift.errors import FileFormatError, MissingFileError
from minift.files import check_folder, json_bool, json_int, json_str, read_json, read_text

__all__ = ["WordPieceTokenizer", "load_vocab", "normalize", "pre_tokenize", "wordpiece"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path) -> dict[str, int]:
    """vocab.txt -> {token: id}, id = line number (0-based). Duplicates and blanks are errors,
    each a FileFormatError naming the file and the line; a missing file a MissingFileError."""
    path = Path(path)
    text = read_text(path, "vocabulary")
    vocab: dict[str, int] = {}
    # one token a line: split on "\n" only (a token may hold other line-breaking characters)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for i, line in enumerate(lines):
        token = line.rstrip("\r")
        if not token:
            raise FileFormatError(
                path, "empty; every line must hold a token", field=f"line {i + 1}"
            )
        if token in vocab:
            raise FileFormatError(
                path,
                f"token {token!r} appears on lines {vocab[token] + 1} and {i + 1}",
                field=f"line {i + 1}",
            )
        vocab[token] = i
    if not vocab:
        raise FileFormatError(path, "empty vocabulary")
    return vocab


# -- 1. normalise ---------------------------------------------------------------------------------


def _is_control(ch: str) -> bool:
    # \t \n \r are control characters that BERT counts as whitespace. "Other" means Cc, Cf, Co
    # and Cs, as in the tokenizers library; an unassigned code point (Cn) stays, and ends as [UNK].
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or ch.isspace()


def _is_cjk(cp: int) -> bool:
    """The CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana: those are words)."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF  # sic: the tokenizers library's bound (Unicode's is 2B820)
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # every non-letter, non-digit ASCII symbol counts, even those Unicode files as S* ($ + < ^ `)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None,
              handle_chinese_chars: bool = True) -> str:  # fmt: skip
    """Step 1. ``strip_accents=None`` follows ``lowercase`` (Hugging Face's rule)."""
    if strip_accents is None:
        strip_accents = lowercase
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif handle_chinese_chars and _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = "".join(out)
    if strip_accents:
        text = "".join(
            c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
        )
    # per character, as the tokenizers library does: no final-sigma rule ("ΟΣ" -> "οσ")
    return "".join(c.lower() for c in text) if lowercase else text


# -- 2. pre-tokenise ------------------------------------------------------------------------------


def pre_tokenize(text: str) -> list[str]:
    """Step 2: words split on whitespace, each punctuation character a word of its own."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    return words


# -- 3. WordPiece ---------------------------------------------------------------------------------


def wordpiece(word: str, vocab, unk_token="[UNK]", prefix="##", max_chars=100) -> list[str]:
    """Step 3: greedy longest-match-first pieces of one word, or [unk_token]."""
    if len(word) > max_chars:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:  # the longest piece first
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:  # no piece of any length: the whole word is unknown
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# -- the tokenizer --------------------------------------------------------------------------------

_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)  # fmt: skip  (the tokenizers library's WordPiece decoder, rule for rule, in its order)


class WordPieceTokenizer:
    """``encode(text) -> [CLS] … [SEP] ids``, ``decode(ids) -> text``, ``encode_batch`` for a model.

    vocab            {token: id}, from ``load_vocab("vocab.txt")``
    lowercase        lower-case the text (an "uncased" model)
    strip_accents    None: the same as ``lowercase``
    model_max_length the longest sequence the model takes ([CLS] and [SEP] included)
    """

    def __init__(
        self,
        vocab: dict[str, int],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        model_max_length: int = 512,
    ):
        self.vocab = dict(vocab)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.handle_chinese_chars = bool(handle_chinese_chars)
        self.continuing_subword_prefix = continuing_subword_prefix
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.model_max_length = int(model_max_length)
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        specials = (unk_token, cls_token, sep_token, pad_token, mask_token)
        missing = [t for t in specials if t not in self.vocab]
        if missing:
            raise ValueError(f"vocab: the special tokens {missing} are not in the vocabulary")
        self.unk_id, self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            self.vocab[t] for t in specials
        )
        self.special_ids = frozenset(self.vocab[t] for t in specials)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """Steps 1–3: the wordpieces of ``text``, without [CLS] / [SEP]."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        text = normalize(text, self.lowercase, self.strip_accents, self.handle_chinese_chars)
        return [
            piece
            for word in pre_tokenize(text)
            for piece in wordpiece(
                word,
                self.vocab,
                self.unk_token,
                self.continuing_subword_prefix,
                self.max_input_chars_per_word,
            )
        ]

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """[CLS] pieces [SEP] as ids; with ``max_length`` (>= 2), the pieces are cut to fit."""
        ids = [self.vocab[p] for p in self.tokenize(text)]
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
                raise TypeError(f"max_length: expected an integer, got {max_length!r}")
            if max_length < 2:
                raise ValueError(
                    f"max_length: expected >= 2 (room for [CLS] and [SEP]), got {max_length}"
                )
            ids = ids[: max_length - 2]
        return [self.cls_id, *ids, self.sep_id]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if int(i) not in self.ids_to_tokens:
                raise ValueError(
                    f"ids: {int(i)} is not an id of this vocabulary (size {len(self)})"
                )
            out.append(self.ids_to_tokens[int(i)])
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text: "##" pieces glued on, others after a space, the decoder's cleanup."""
        tokens = self.convert_ids_to_tokens(
            [i for i in ids if not (skip_special_tokens and int(i) in self.special_ids)]
        )
        prefix = self.continuing_subword_prefix
        out = []
        for i, token in enumerate(tokens):
            if i:
                token = token[len(prefix) :] if token.startswith(prefix) else " " + token
            for dirty, clean in _CLEANUP:
                token = token.replace(dirty, clean)
            out.append(token)
        return "".join(out)

    def encode_batch(
        self, texts: Sequence[str], max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:  # -> input_ids int64 [B, T], attention_mask int64 [B, T]
        """Encode and right-pad with [PAD] to the longest; the mask is 1 on real tokens."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one string")
        if max_length is None:
            max_length = self.model_max_length
        rows = [self.encode(t, max_length) for t in texts]
        if not rows:
            raise ValueError("texts: expected at least one text, got none")
        T = max(map(len, rows))
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
            mask[b, : len(row)] = 1
        return ids, mask

    @classmethod
    def from_folder(cls, folder) -> WordPieceTokenizer:
        """vocab.txt, with the options of tokenizer_config.json when there is one (Hugging Face's
        BertTokenizer reads the same two files): do_lower_case, strip_accents,
        tokenize_chinese_chars, the special tokens and model_max_length.

        Each option must have its JSON type (a boolean true or false, never "false"); a special
        token is a string or Hugging Face's AddedToken object ({"content": "[UNK]", …}) and must
        be in the vocabulary. A tokenizer_config.json that is there but cannot be read (a
        folder, a dangling link, not JSON) is an error, never taken for a missing one: the
        options it would have set change every id.
        """
        folder = check_folder(folder, "a WordPiece tokenizer folder holds vocab.txt")
        vocab_path = folder / "vocab.txt"
        if not os.path.lexists(vocab_path):
            raise MissingFileError(
                folder, "no vocab.txt; a WordPiece tokenizer needs its vocabulary file"
            )
        vocab = load_vocab(vocab_path)
        config_path = folder / "tokenizer_config.json"
        if not os.path.lexists(config_path):
            config = {}
        else:
            config = read_json(config_path, "tokenizer config")
        tokenizer_class = json_str(
            config, "tokenizer_class", config_path, nullable=True, default=None
        )
        if tokenizer_class not in (None, "BertTokenizer", "BertTokenizerFast"):
            raise FileFormatError(
                config_path,
                f"{tokenizer_class!r} is not a WordPiece (BERT) tokenizer",
                field="tokenizer_class",
            )
        options = {
            "lowercase": json_bool(config, "do_lower_case", config_path, default=True),
            "strip_accents": json_bool(
                config, "strip_accents", config_path, nullable=True, default=None
            ),
            "handle_chinese_chars": json_bool(
                config, "tokenize_chinese_chars", config_path, default=True
            ),
        }
        for field, default in (
            ("unk_token", "[UNK]"),
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("mask_token", "[MASK]"),
        ):
            token = _special_token(config, field, config_path, default)
            if token not in vocab:
                if field in config:
                    message = f"{token!r} is not in the vocabulary, {vocab_path}"
                    raise FileFormatError(config_path, message, field=field)
                message = f"the special token {token!r} ({field}) is not in the vocabulary"
                raise FileFormatError(vocab_path, message)
            options[field] = token
        max_len = json_int(
            config, "model_max_length", config_path, minimum=1, nullable=True, default=None
        )
        # Hugging Face writes a huge integer (1e30) for "no limit": then the class default
        if max_len is not None and max_len < 10**9:
            options["model_max_length"] = max_len
        return cls(vocab, **options)


def _special_token(config: dict, field: str, path, default: str) -> str:
    """A special token as tokenizer_config.json gives it: a string, or Hugging Face's AddedToken
    object, whose "content" is the token."""
    value = config.get(field, default)
    if isinstance(value, dict):
        if not isinstance(value.get("content"), str):
            raise FileFormatError(
                path, 'expected an AddedToken object with a string "content"', field=field
            )
        return value["content"]
    return json_str(config, field, path, default=default)
