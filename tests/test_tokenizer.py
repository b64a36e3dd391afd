"""CharTokenizer: round trips, fixed ids, no silent <unk>, JSON round trip."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minift.data import ALPHABET, SPECIAL_TOKENS, CharTokenizer, standard_tokenizer

TOK = standard_tokenizer()


@given(st.text(alphabet=ALPHABET))
def test_any_string_over_the_vocabulary_round_trips(text):
    ids = TOK.encode(text)
    assert len(ids) == len(text)
    assert TOK.decode(ids) == text


@given(st.text(alphabet="abc xyz", min_size=1), st.text(alphabet="ab\n"))
def test_a_tokenizer_built_from_text_round_trips_that_text(text, extra):
    tok = CharTokenizer.from_text(text, extra_chars=extra)
    assert tok.decode(tok.encode(text + extra)) == text + extra
    assert tok.vocab_size == len(SPECIAL_TOKENS) + len(set(text + extra))


def test_special_tokens_have_fixed_ids_before_the_characters():
    assert TOK.itos[:4] == ["<pad>", "<bos>", "<sep>", "<eos>"]
    assert (TOK.pad_id, TOK.bos_id, TOK.sep_id, TOK.eos_id) == (0, 1, 2, 3)
    assert min(TOK.encode(ALPHABET)) == 4


def test_standard_tokenizer_ids_never_change():
    # A saved model's embedding rows are indexed by these ids: changing them breaks checkpoints.
    assert TOK.vocab_size == 128
    assert TOK.encode("\n ") == [4, 5]
    assert TOK.encode("Az~é") == [38, 95, 99, 117]


def test_character_outside_the_vocabulary_is_an_error_naming_it_and_its_position():
    with pytest.raises(ValueError, match=r"text: character '€' \(U\+20AC\) at position 3"):
        TOK.encode("abc€d")


def test_decode_skips_special_tokens_unless_asked():
    ids = [TOK.bos_id, *TOK.encode("hi"), TOK.sep_id, TOK.eos_id, TOK.pad_id]
    assert TOK.decode(ids) == "hi"
    assert TOK.decode(ids, skip_special_tokens=False) == "<bos>hi<sep><eos><pad>"


def test_decode_rejects_an_id_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"ids: id 128 at position 1"):
        TOK.decode([5, 128])


def test_to_dict_from_dict_round_trips_through_json():
    d = json.loads(json.dumps(TOK.to_dict()))
    back = CharTokenizer.from_dict(d)
    assert back == TOK and hash(back) == hash(TOK)
    assert back.encode("Où est Marie ?") == TOK.encode("Où est Marie ?")


def test_same_characters_in_any_order_give_the_same_tokenizer():
    assert CharTokenizer("cab") == CharTokenizer("abc") == CharTokenizer.from_text("abcabc")
    assert CharTokenizer("abc") != CharTokenizer("abd")


def test_from_dict_rejects_another_kind_of_tokenizer():
    with pytest.raises(ValueError, match="type"):
        CharTokenizer.from_dict({"type": "bpe", "chars": "abc"})
    with pytest.raises(ValueError, match="special_tokens"):
        CharTokenizer.from_dict({"type": "char", "special_tokens": ["<unk>"], "chars": "abc"})


@pytest.mark.parametrize("chars, match", [("aba", "'a' more than once"), (["ab"], "'ab'")])
def test_bad_character_lists_are_rejected(chars, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars)
