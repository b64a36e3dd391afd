"""minift.errors: the one check of a count or size, and the errors every module raises."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minift.errors import FileFormatError, MiniftError, MissingFileError, check_int


@given(value=st.integers(-1000, 1000), minimum=st.integers(-3, 5))
def test_check_int_passes_exactly_the_integers_at_or_above_the_minimum(value, minimum):
    for typed in (value, np.int64(value), np.int32(value)):
        if value >= minimum:
            got = check_int("n", typed, minimum)
            assert got == value and type(got) is int
        else:
            with pytest.raises(
                MiniftError, match=rf"^n: expected .*, got {re.escape(repr(typed))}$"
            ):
                check_int("n", typed, minimum)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, np.float32(3), "3", [3]])
def test_check_int_refuses_what_is_not_an_integer_naming_the_argument(value):
    expected = f"steps: expected a positive integer, got {value!r}"
    with pytest.raises(MiniftError, match=f"^{re.escape(expected)}$"):
        check_int("steps", value)


def test_check_int_words_its_expectation():
    with pytest.raises(ValueError, match="^k: expected an integer >= 0, got -1$"):
        check_int("k", -1, minimum=0)
    with pytest.raises(ValueError, match="^r: expected a positive integer rank, got 0$"):
        check_int("r", 0, what="a positive integer rank")
    with pytest.raises(ValueError, match="^h: expected a positive integer or None, got 0$"):
        check_int("h", 0, optional=True)
    assert check_int("h", None, optional=True) is None
    with pytest.raises(ValueError, match="^h: expected a positive integer, got None$"):
        check_int("h", None)


def test_errors_are_value_errors_and_a_missing_file_is_a_file_not_found_error(tmp_path):
    err = FileFormatError(tmp_path / "a.json", "expected an object", field="r")
    assert isinstance(err, MiniftError) and isinstance(err, ValueError)
    assert str(err) == f"{tmp_path / 'a.json'}: r: expected an object"
    assert (err.path, err.field) == (str(tmp_path / "a.json"), "r")
    missing = MissingFileError(tmp_path, "not there")
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, FileFormatError)


def test_a_bool_is_not_a_count_anywhere():
    """Python takes True for 1: each of these once accepted it (or a float) as a count."""
    import minift
    from minift.data.corpus import load_corpus
    from minift.model import GPTForSequenceClassification

    cfg = minift.GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, d_model=8)
    with pytest.raises(ValueError, match="num_labels: expected a positive integer, got True"):
        GPTForSequenceClassification(cfg, num_labels=True)
    with pytest.raises(ValueError, match="max_chars: expected a positive integer or None, got 2.5"):
        load_corpus(max_chars=2.5)
