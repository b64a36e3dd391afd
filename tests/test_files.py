"""minift.files, the floor every save and load stands on: strict JSON, fields checked by type and
range, safetensors refused when damaged, of another dtype or shape, or holding NaN or ±inf, and
minift's own checksum impossible to switch off by editing a header.

(The safetensors layout and the atomic writes are proven in tests/test_checkpoint.py.)"""

import json
import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minift.errors import FileFormatError, MiniftError, MissingFileError
from minift.files import (
    DIGEST_KEY,
    check_tensor,
    json_bool,
    json_int,
    json_number,
    json_str,
    json_str_list,
    load_tensors,
    read_json,
    read_text,
    save_tensors,
)

# -- JSON files ------------------------------------------------------------------------------


def test_read_json_names_the_file_whatever_is_wrong_with_it(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(MissingFileError, match=f"{path}: adapter config: no such file"):
        read_json(path, "adapter config")
    with pytest.raises(FileNotFoundError):  # a MissingFileError is one too
        read_json(path, "adapter config")
    for content, reason in [
        (b"", "is not valid JSON"),
        (b'{"a": 1', "is not valid JSON"),
        (b'{"a": 1, "a": 2}', r"is not valid JSON \(key 'a' appears twice\)"),
        (b"[1, 2]", "must be a JSON object, got a list"),
        (b"null", "must be a JSON object, got null"),
        (b'{"a": "\xff"}', "is not UTF-8 text"),
    ]:
        path.write_bytes(content)
        with pytest.raises(FileFormatError, match=f"{path}: adapter config {reason}"):
            read_json(path, "adapter config")


def test_read_json_refuses_a_folder_or_a_dangling_link(tmp_path):
    folder = tmp_path / "tokenizer_config.json"
    folder.mkdir()
    with pytest.raises(FileFormatError, match="a folder, expected a file"):
        read_json(folder, "tokenizer config")
    link = tmp_path / "config.json"
    os.symlink(tmp_path / "nowhere.json", link)
    with pytest.raises(MissingFileError, match="no such file"):
        read_json(link, "config")


@given(lines=st.lists(st.text(alphabet="ab\r\n\u2028é", max_size=6), max_size=4))
def test_read_text_returns_the_file_as_written_line_ends_included(tmp_path_factory, lines):
    # a vocabulary token may hold "\r" or another line-breaking character: nothing is translated
    text = "\n".join(lines)
    path = tmp_path_factory.mktemp("text") / "vocab.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_text(path, "vocabulary") == text


def test_read_text_names_the_file_and_what_it_is(tmp_path):
    path = tmp_path / "vocab.txt"
    with pytest.raises(MissingFileError, match=f"{path}: vocabulary: no such file"):
        read_text(path, "vocabulary")
    path.write_bytes(b"[PAD]\n\xff\n")
    with pytest.raises(FileFormatError, match=f"{path}: vocabulary is not UTF-8 text"):
        read_text(path, "vocabulary")
    with pytest.raises(FileFormatError, match="vocabulary: a folder, expected a file"):
        read_text(tmp_path, "vocabulary")


def test_every_file_error_is_one_minift_error_naming_file_and_field():
    error = FileFormatError("adapter_config.json", 'expected a number, got "0.1"', field="r")
    assert isinstance(error, MiniftError) and isinstance(error, ValueError)
    assert (error.path, error.field) == ("adapter_config.json", "r")
    assert str(error) == 'adapter_config.json: r: expected a number, got "0.1"'


# -- JSON fields -------------------------------------------------------------------------------

CFG = "adapter_config.json"


@pytest.mark.parametrize("value", ["no", "false", 1, 0, 1.0, None, [True]])
def test_a_boolean_field_must_be_a_json_boolean(value):
    with pytest.raises(FileFormatError, match=f"{CFG}: use_rslora: expected true or false, got"):
        json_bool({"use_rslora": value}, "use_rslora", CFG)


def test_fields_read_their_value_or_default_and_name_what_is_missing():
    obj = {"flag": False, "r": 8, "alpha": 16, "name": "lora", "targets": ["c_attn"], "n": None}
    assert json_bool(obj, "flag", CFG) is False
    assert json_int(obj, "r", CFG, minimum=1) == 8
    assert json_number(obj, "alpha", CFG, minimum=0) == 16.0
    assert json_str(obj, "name", CFG, choices=("lora", "dora")) == "lora"
    assert json_str_list(obj, "targets", CFG) == ["c_attn"]
    assert json_int(obj, "absent", CFG, default=3) == 3
    assert json_int(obj, "n", CFG, nullable=True) is None
    with pytest.raises(FileFormatError, match=f"{CFG}: absent: missing"):
        json_int(obj, "absent", CFG)
    with pytest.raises(FileFormatError, match="n: expected an integer, got null"):
        json_int(obj, "n", CFG)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.1", r'expected a number in \[0, 1\), got "0.1"'),
        (1.0, r"expected a number in \[0, 1\), got 1.0"),
        (-0.5, r"expected a number in \[0, 1\), got -0.5"),
        (True, r"expected a number in \[0, 1\), got true"),
        ([0.1], r"expected a number in \[0, 1\), got a list"),
        (float("nan"), r"expected a number in \[0, 1\), got NaN"),
    ],
)
def test_a_number_field_names_its_range_and_what_came(value, message):
    with pytest.raises(FileFormatError, match=f"{CFG}: lora_dropout: {message}"):
        json_number({"lora_dropout": value}, "lora_dropout", CFG, minimum=0, below=1)


@given(value=st.one_of(st.text(max_size=5), st.floats(), st.booleans(), st.none(), st.integers()))
def test_an_integer_field_takes_integers_in_range_and_nothing_else(value):
    obj = {"r": value}
    valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64
    if valid:
        assert json_int(obj, "r", CFG, minimum=1, maximum=64) == value
    else:
        with pytest.raises(FileFormatError, match=r"r: expected an integer in \[1, 64\]"):
            json_int(obj, "r", CFG, minimum=1, maximum=64)


def test_string_fields_name_their_choices():
    with pytest.raises(
        FileFormatError, match='peft_type: expected one of "LORA", "IA3", got a list'
    ):
        json_str({"peft_type": ["LORA"]}, "peft_type", CFG, choices=("LORA", "IA3"))
    with pytest.raises(FileFormatError, match="target_modules: expected a list of strings, got"):
        json_str_list({"target_modules": ["c_attn", 3]}, "target_modules", CFG)


# -- tensors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_naming_the_tensor_unless_asked_for(tmp_path, bad):
    path = tmp_path / "adapter_model.safetensors"
    weight = np.ones((3, 4), dtype=np.float32)
    weight[1, 2] = bad
    save_tensors(path, {"ok": np.zeros(2), "lora_A.weight": weight})
    with pytest.raises(FileFormatError, match=r"lora_A.weight: holds .* at \(1, 2\)"):
        load_tensors(path)
    tensors, _ = load_tensors(path, allow_nonfinite=True)
    np.testing.assert_array_equal(tensors["lora_A.weight"], weight)


def test_a_folder_where_weights_should_be_is_a_file_format_error(tmp_path):
    (tmp_path / "model.safetensors").mkdir()
    with pytest.raises(FileFormatError, match="not a readable safetensors file .*a folder"):
        load_tensors(tmp_path / "model.safetensors")
    with pytest.raises(MissingFileError, match="no such file"):
        load_tensors(tmp_path / "absent.safetensors")


def _rename_header_key(path, old: str, new: str):
    blob = path.read_bytes()
    assert len(old) == len(new)
    path.write_bytes(blob.replace(old.encode(), new.encode(), 1))


def test_a_flipped_bit_in_the_checksum_key_cannot_switch_the_check_off(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": np.arange(6.0).reshape(2, 3)})
    _rename_header_key(path, DIGEST_KEY, "minift_sha257")
    load_tensors(path)  # as a file of someone else's, it reads
    with pytest.raises(FileFormatError, match=f"no {DIGEST_KEY} in its header, though minift"):
        load_tensors(path, require_digest=True)


def test_check_tensor_refuses_a_shape_that_would_only_broadcast_and_another_dtype():
    with pytest.raises(FileFormatError, match=r"f: ln_f.weight: expected shape \(8,\), got \(1,\)"):
        check_tensor("f", "ln_f.weight", np.ones(1, np.float32), (8,))
    with pytest.raises(FileFormatError, match="expected dtype float32 or float64, got int32"):
        check_tensor("f", "w", np.ones(8, np.int32), (8,), (np.float32, np.float64))
    check_tensor("f", "w", np.ones(8, np.float64), (8,), (np.float32, np.float64))


def test_the_error_message_is_json_of_what_came():
    with pytest.raises(FileFormatError, match=json.dumps("x" * 10)):
        json_bool({"b": "x" * 10}, "b", CFG)


# -- safetensors headers written by hand: every misfit named, none read as tensors -------------


def _write_raw(path, header: dict, data: bytes):
    """A file in the safetensors layout: 8-byte little-endian header length, JSON, data."""
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


F32 = {"dtype": "F32", "shape": [2]}  # 8 bytes
RAW_MISFITS = [
    ({"__metadata__": {"step": 3}, "w": {**F32, "data_offsets": [0, 8]}}, 8,
     "__metadata__ is not a map of strings to strings"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8,
     "w: shape [-2] is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8,
     "w: shape '2' is not a list of sizes"),
    ({"w": {**F32, "data_offsets": [0]}}, 8, "w: data_offsets [0] is not [begin, end]"),
    ({"w": {**F32, "data_offsets": [0, "8"]}}, 8, "w: data_offsets [0, '8'] is not [begin, end]"),
    ({"a": {**F32, "data_offsets": [0, 8]}, "b": {**F32, "data_offsets": [16, 24]}}, 24,
     "b: data starts at byte 16, expected 8"),  # a gap of 8 bytes that no tensor owns
    ({"a": {**F32, "data_offsets": [0, 8]}, "b": {**F32, "data_offsets": [4, 12]}}, 12,
     "b: data starts at byte 4, expected 8"),  # two tensors sharing bytes
]  # fmt: skip


@pytest.mark.parametrize("header, data_len, message", RAW_MISFITS)
def test_a_hand_written_header_that_misdescribes_the_data_is_refused(
    tmp_path, header, data_len, message
):
    path = tmp_path / "model.safetensors"
    _write_raw(path, header, bytes(data_len))
    with pytest.raises(FileFormatError, match=re.escape(message)) as caught:
        load_tensors(path)
    assert str(path) in str(caught.value)
    _write_raw(path, {"w": {**F32, "data_offsets": [0, 8]}}, bytes(8))  # the same, well formed
    tensors, _ = load_tensors(path)
    np.testing.assert_array_equal(tensors["w"], np.zeros(2, np.float32))


def test_a_path_through_a_file_is_refused_naming_why_it_cannot_be_read(tmp_path):
    (tmp_path / "weights").write_text("a file, not a folder")
    with pytest.raises(FileFormatError, match="cannot be read: Not a directory"):
        load_tensors(tmp_path / "weights" / "model.safetensors")


@pytest.mark.parametrize("name", ["", "__metadata__", 3])
def test_a_tensor_name_the_format_cannot_hold_is_refused_before_writing(tmp_path, name):
    path = tmp_path / "model.safetensors"
    with pytest.raises(ValueError, match=re.escape("tensor name: expected a non-empty string")):
        save_tensors(path, {name: np.zeros(2)})
    assert not path.exists()
