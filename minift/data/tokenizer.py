"""CharTokenizer: one token per character, plus four special tokens for prompt formats.

    ids 0..3     <pad> <bos> <sep> <eos>      the specials, always these ids
    ids 4..V-1   the characters, in code-point order

    encode("hi")      -> [ids of "h", "i"]        no specials are added: formats add them
    decode(ids)       -> "hi"                     specials skipped unless asked for

There is no <unk>: a character outside the vocabulary is an error that names the character and
its position, because a silently replaced character is a silently wrong training example.

``standard_tokenizer()`` is the one minift's models use: built from ``corpus.ALPHABET`` (printable
ASCII, newline, French accented letters), not from whatever the corpus happens to contain, so its
ids are the same on every Python version and every task's text encodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from minift.data.corpus import ALPHABET

__all__ = ["CharTokenizer", "SPECIAL_TOKENS", "standard_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<sep>", "<eos>")


class CharTokenizer:
    """Character-level tokenizer: ``CharTokenizer(chars)`` or ``CharTokenizer.from_text(text)``."""

    pad_id = 0  # right-padding; GPTConfig(pad_token_id=0) pools the last token that is not pad
    bos_id = 1  # begins every sequence
    sep_id = 2  # ends the prompt of a generation example: the answer follows
    eos_id = 3  # ends the answer: generation stops here

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"chars: expected single characters, got {ch!r} at index {i}")
        if len(set(chars)) != len(chars):
            repeated = next(ch for ch in chars if chars.count(ch) > 1)
            raise ValueError(f"chars: each character once, got {repeated!r} more than once")
        self.chars = "".join(sorted(chars))  # code-point order: the same set gives the same ids
        n = len(SPECIAL_TOKENS)
        self.stoi = {ch: n + i for i, ch in enumerate(self.chars)}
        self.itos = list(SPECIAL_TOKENS) + list(self.chars)

    @classmethod
    def from_text(cls, text: str, extra_chars: str = "") -> CharTokenizer:
        """The characters of ``text``, plus ``extra_chars`` that the text may lack."""
        return cls(set(text) | set(extra_chars))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """text -> ids, one per character. Raises ValueError at the first unknown character."""
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pos = next(i for i, ch in enumerate(text) if ch not in stoi)
            ch = text[pos]
            raise ValueError(
                f"text: character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the "
                f"tokenizer's vocabulary of {len(self.chars)} characters; normalise the text "
                "first (minift.data.normalize_text) or build the tokenizer with extra_chars"
            ) from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """ids -> text. Specials are dropped, or written as "<bos>" etc. when not skipped."""
        out = []
        n_special, V = len(SPECIAL_TOKENS), self.vocab_size
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < V:
                raise ValueError(f"ids: id {i} at position {pos} is outside [0, {V})")
            if i >= n_special or not skip_special_tokens:
                out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        """JSON-serialisable; saved next to a model so its ids can be read back."""
        return {"type": "char", "special_tokens": list(SPECIAL_TOKENS), "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("type") != "char":
            raise ValueError(f"d: expected type 'char', got {d.get('type')!r}")
        if list(d.get("special_tokens", ())) != list(SPECIAL_TOKENS):
            raise ValueError(
                f"d: expected special_tokens {list(SPECIAL_TOKENS)}, got {d.get('special_tokens')}"
            )
        return cls(d["chars"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def standard_tokenizer() -> CharTokenizer:
    """The tokenizer of minift's corpus and tasks: ALPHABET plus the specials (vocab 128)."""
    return CharTokenizer(ALPHABET)
