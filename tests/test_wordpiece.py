"""The WordPiece tokenizer: each step on a toy vocabulary, then all-MiniLM-L6-v2's against the
tokenizer.json that ships with it and the ids its library produced (skipped without the model),
and, where installed, against the tokenizers library itself on a thousand real texts."""

import json
from pathlib import Path

import pytest
from helpers import installed_minilm, require

from minift.data import load_task
from minift.data.wordpiece import (
    WordPieceTokenizer,
    load_vocab,
    normalize,
    pre_tokenize,
    wordpiece,
)

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.safetensors"

TOY = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "the", "cafe", ",",
    "!", "'", "t", "don", "a", "##a", "中", "hello", "##s",
]  # fmt: skip


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TOY) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_folder(tmp_path)


def ids_of(tokens):
    return [TOY.index(t) for t in tokens]


# -- each step ---------------------------------------------------------------------------------


def test_normalize_lowercases_strips_accents_and_cleans():
    assert normalize("Café DÉJÀ") == "cafe deja"
    assert normalize("Café", lowercase=False) == "Café"  # cased: accents kept by default
    assert normalize("Café", lowercase=False, strip_accents=True) == "Cafe"
    assert normalize("a\tb\nc\u00a0d") == "a b c d"  # every whitespace becomes a space
    assert normalize("a\x00b\ufffdc\x07d\u200be") == "abcde"  # NUL, U+FFFD, Cc and Cf dropped
    assert normalize("日本") == " 日  本 "  # each ideograph a word of its own
    assert normalize("ΟΣ") == "οσ"  # character by character: no final sigma


def test_pre_tokenize_splits_whitespace_and_every_punctuation_character():
    assert pre_tokenize("don't stop!!  now") == ["don", "'", "t", "stop", "!", "!", "now"]
    assert pre_tokenize("$5+x^2") == ["$", "5", "+", "x", "^", "2"]  # ASCII symbols count too
    assert pre_tokenize("«quote»") == ["«", "quote", "»"]  # Unicode P* categories
    assert pre_tokenize("   ") == []


def test_wordpiece_is_greedy_longest_match_first():
    vocab = {t: i for i, t in enumerate(TOY)}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece("aaa", vocab) == ["a", "##a", "##a"]
    # "hellos": the longest first piece is "hello", then "##s"
    assert wordpiece("hellos", vocab) == ["hello", "##s"]
    # one rest without a piece makes the WHOLE word unknown, not just the rest
    assert wordpiece("unaffablex", vocab) == ["[UNK]"]
    assert wordpiece("a" * 101, vocab) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert wordpiece("a" * 100, vocab) == ["a"] + ["##a"] * 99


def test_encode_wraps_in_cls_sep_and_max_length_cuts_the_pieces(toy):
    assert toy.encode("Unaffable, don't!") == ids_of(
        ["[CLS]", "un", "##aff", "##able", ",", "don", "'", "t", "!", "[SEP]"]
    )
    assert toy.encode("the café zzz") == ids_of(["[CLS]", "the", "cafe", "[UNK]", "[SEP]"])
    assert toy.encode("the cafe the", max_length=4) == ids_of(["[CLS]", "the", "cafe", "[SEP]"])
    assert toy.encode("") == ids_of(["[CLS]", "[SEP]"])
    with pytest.raises(ValueError, match="max_length: expected >= 2"):
        toy.encode("the", max_length=1)
    with pytest.raises(TypeError, match="text: expected a str"):
        toy.encode(["the"])


def test_decode_glues_pieces_and_drops_specials(toy):
    # the cleanup runs piece by piece, as in the tokenizers library: " ," and " !" close up,
    # but "don ' t" stays apart (its rule " ' " never sees the two spaces in one piece)
    assert toy.decode(toy.encode("Unaffable, don't!")) == "unaffable, don ' t!"
    assert toy.decode(ids_of(["[CLS]", "the", "[UNK]", "[SEP]"])) == "the"
    assert toy.decode(ids_of(["the", "[UNK]"]), skip_special_tokens=False) == "the [UNK]"
    with pytest.raises(ValueError, match="99 is not an id of this vocabulary"):
        toy.decode([99])


def test_encode_batch_pads_right_and_masks(toy):
    ids, mask = toy.encode_batch(["the cafe", "the"])
    assert ids.tolist() == [
        ids_of(["[CLS]", "the", "cafe", "[SEP]"]),
        ids_of(["[CLS]", "the", "[SEP]", "[PAD]"]),
    ]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    with pytest.raises(TypeError, match="one string"):
        toy.encode_batch("the")


def test_a_bad_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        WordPieceTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="token 'a' appears on lines 1 and 3"):
        load_vocab(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(
        ValueError,
        match=r"vocab.txt: the special token '\[UNK\]' \(unk_token\) is not in the vocabulary",
    ):
        WordPieceTokenizer.from_folder(tmp_path)


# -- all-MiniLM-L6-v2's tokenizer against its tokenizer.json -----------------------------------


@pytest.fixture(scope="module")
def minilm():
    from minift import hub

    folder = installed_minilm()
    return folder, hub.load_tokenizer(folder)


def test_vocab_and_options_agree_with_tokenizer_json(minilm):
    folder, tok = minilm
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    assert model["type"] == "WordPiece" and model["vocab"] == tok.vocab
    assert model["unk_token"] == tok.unk_token
    assert model["continuing_subword_prefix"] == tok.continuing_subword_prefix
    assert model["max_input_chars_per_word"] == tok.max_input_chars_per_word
    norm = spec["normalizer"]
    assert norm["type"] == "BertNormalizer" and norm["clean_text"]
    assert norm["lowercase"] == tok.lowercase
    assert norm["strip_accents"] == tok.strip_accents  # None: follows lowercase, in both
    assert norm["handle_chinese_chars"] == tok.handle_chinese_chars
    assert spec["pre_tokenizer"]["type"] == "BertPreTokenizer"
    specials = spec["post_processor"]["special_tokens"]
    assert specials["[CLS]"]["ids"] == [tok.cls_id] and specials["[SEP]"]["ids"] == [tok.sep_id]
    single = [next(iter(x.values()))["id"] for x in spec["post_processor"]["single"]]
    assert single == ["[CLS]", "A", "[SEP]"]
    assert spec["padding"]["pad_id"] == tok.pad_id
    assert spec["decoder"] == {"type": "WordPiece", "prefix": "##", "cleanup": True}


def test_ids_and_decoding_equal_what_the_tokenizers_library_produced(minilm):
    from minift.checkpoint import load_tensors

    _, tok = minilm
    _, meta = load_tensors(REFERENCE)
    cases = json.loads(meta["tokenizer_cases"])
    assert len(cases) >= 10
    for case in cases:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"], case["text"]


@pytest.mark.reference
def test_the_tokenizers_library_agrees_on_every_task_text_and_script(minilm):
    """Live, where the tokenizers library is installed: the 1,140 texts of stdlib-modules, and
    every character of the Latin, Greek, Cyrillic, punctuation and CJK blocks."""
    tokenizers = require("tokenizers", "reference")
    folder, tok = minilm
    theirs = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs.no_truncation()
    theirs.no_padding()
    task = load_task("stdlib-modules", seed=0)
    texts = [e.prompt for e in task.train + task.val + task.test]
    for lo, hi in [
        (0x20, 0x250),
        (0x370, 0x530),
        (0x2000, 0x2070),
        (0x3000, 0x3040),
        (0x4E00, 0x4F00),
    ]:
        texts += ["a" + chr(c) + "b " + chr(c) for c in range(lo, hi)]
    for text, encoding in zip(texts, theirs.encode_batch(texts), strict=True):
        assert tok.encode(text) == encoding.ids, text
        assert tok.decode(encoding.ids) == theirs.decode(encoding.ids), text
