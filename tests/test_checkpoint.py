"""Checkpoints: every claim of minift/checkpoint.py's docstrings, one test each."""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import dangling_link, disk_state, replace_by_folder, replace_by_link_to_folder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minift import GPT, GPTConfig, GPTForSequenceClassification
from minift import checkpoint as ckpt
from minift.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    load_model,
    load_tensors,
    load_weights,
    read_json,
    save_model,
    save_tensors,
)

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
IDX = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])


def _make(cls, dtype=np.float32, seed=0, config=TINY):
    if cls is GPTForSequenceClassification:
        return GPTForSequenceClassification(config, num_labels=3, seed=seed, dtype=dtype)
    return GPT(config, seed=seed, dtype=dtype)


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


def _header(blob: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8 : 8 + n])


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GPT, GPTForSequenceClassification])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_roundtrips_bit_exactly(tmp_path, cls, dtype):
    model = _make(cls, dtype, seed=3)
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    assert type(loaded) is cls
    assert loaded.config == model.config and loaded.dtype == model.dtype
    if cls is GPTForSequenceClassification:
        assert loaded.num_labels == model.num_labels
    _assert_same_state(loaded.state_dict(), model.state_dict())
    assert np.array_equal(loaded.forward(IDX), model.forward(IDX))


def test_load_model_casts_to_a_requested_dtype(tmp_path):
    model = _make(GPT, np.float64, seed=1)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, dtype=np.float32)
    assert loaded.dtype == np.float32
    expected = {k: v.astype(np.float32) for k, v in model.state_dict().items()}
    _assert_same_state(loaded.state_dict(), expected)


def test_save_tensors_roundtrips_any_layout_and_metadata(tmp_path):
    # What the training loop saves: moments of any layout, a step counter, text metadata.
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    tensors = {
        "transposed": base.T,  # not C-contiguous
        "strided": base[:, ::2],
        "big_endian": base.astype(">f4"),
        "step": np.array(7, dtype=np.int64),  # 0-d
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    save_tensors(tmp_path / "state.safetensors", tensors, metadata={"optimizer": "AdamW"})
    loaded, metadata = load_tensors(tmp_path / "state.safetensors")
    assert metadata["optimizer"] == "AdamW" and set(metadata) == {"optimizer", "minift_sha256"}
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].shape == value.shape, name
        assert np.array_equal(loaded[name], value), name
        assert loaded[name].flags.writeable, name
    assert loaded["big_endian"].dtype == np.float32  # stored little-endian, read natively


def test_save_tensors_refuses_what_safetensors_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="obj: safetensors cannot store dtype object"):
        save_tensors(tmp_path / "x.safetensors", {"obj": np.array([None])})
    with pytest.raises(TypeError, match="metadata"):
        save_tensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, metadata={"step": 3})
    assert not (tmp_path / "x.safetensors").exists()


# -- strict loading --------------------------------------------------------------------------


def test_loading_into_another_config_names_the_field(tmp_path):
    save_model(_make(GPT, config=TINY), tmp_path)
    other = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, d_model=8)
    model = GPT(other, seed=5)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        load_weights(model, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: config differs from the model's: ")
    assert "n_layer: checkpoint 2, model 1" in message
    assert "n_head: checkpoint 2, model 4" in message
    assert "d_model" not in message and "vocab_size" not in message  # equal fields not named
    _assert_same_state(model.state_dict(), before)


def test_loading_a_classifier_into_a_plain_gpt_names_the_class(tmp_path):
    save_model(_make(GPTForSequenceClassification), tmp_path)
    with pytest.raises(ValueError) as info:
        load_weights(_make(GPT), tmp_path)
    assert "class: checkpoint GPTForSequenceClassification, model GPT" in str(info.value)
    assert "num_labels: checkpoint 3, model (absent)" in str(info.value)


def _rewrite_weights(directory: Path, edit):
    tensors, metadata = load_tensors(directory / "model.safetensors")
    edit(tensors)
    save_tensors(directory / "model.safetensors", tensors, metadata)


def _load_fails_naming(directory: Path, *fragments):
    model = _make(GPT, seed=9)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        load_weights(model, directory)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert str(directory / "model.safetensors") in str(info.value)
    _assert_same_state(model.state_dict(), before)  # nothing copied before the check failed


def test_missing_key_is_named(tmp_path):
    save_model(_make(GPT), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("h.1.mlp.c_fc.bias"))
    _load_fails_naming(tmp_path, "missing keys ['h.1.mlp.c_fc.bias']")


def test_unexpected_key_is_named(tmp_path):
    save_model(_make(GPT), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update({"lm_head.weight": t["wte.weight"]}))
    _load_fails_naming(tmp_path, "unexpected keys ['lm_head.weight']")


def test_mis_shaped_tensor_is_named(tmp_path):
    save_model(_make(GPT), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update({"ln_f.weight": np.ones(9, np.float32)}))
    _load_fails_naming(tmp_path, "ln_f.weight: expected shape (8,), got (9,)")


def test_load_model_rejects_a_config_without_the_minift_section(tmp_path):
    save_model(_make(GPT), tmp_path)
    config = read_json(tmp_path / "config.json", "config")
    del config["minift"]
    atomic_write_json(tmp_path / "config.json", config)
    with pytest.raises(ValueError, match='no "minift" section'):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(bogus=1), r'unknown fields in the "minift" section: \[\'bogus\'\]'),
        (lambda m: m.update({"class": "BertModel"}), "class: expected GPT or GPTForSequence"),
        (lambda m: m.pop("class"), "class: expected GPT or GPTForSequenceClassification, got None"),
        (lambda m: m.update(n_layer=0), "n_layer: expected a positive integer, got 0"),
    ],
    ids=["unknown-field", "another-class", "no-class", "no-layers"],
)
def test_an_edited_minift_section_is_refused_before_any_weight_is_read(tmp_path, edit, match):
    save_model(_make(GPT), tmp_path)
    config = read_json(tmp_path / "config.json", "config")
    edit(config["minift"])
    atomic_write_json(tmp_path / "config.json", config)
    with pytest.raises(ValueError, match=match) as caught:
        load_model(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)


def test_missing_files_raise_filenotfounderror_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_tensors(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "no_run")
    save_model(_make(GPT), tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_weights(_make(GPT), tmp_path)


# -- corrupted files -------------------------------------------------------------------------


def _tiny_checkpoint_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        save_model(_make(GPT, seed=4), directory)
        return (Path(directory) / "model.safetensors").read_bytes()


BLOB = _tiny_checkpoint_bytes()
HEADER_END = 8 + struct.unpack("<Q", BLOB[:8])[0]  # the data starts here


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("corrupt") / "model.safetensors"


@settings(max_examples=50, deadline=None)
@given(length=st.integers(0, len(BLOB) - 1))
@example(length=0)
@example(length=7)
@example(length=8)
@example(length=HEADER_END - 1)
@example(length=HEADER_END)
@example(length=len(BLOB) - 1)
def test_truncated_file_raises_valueerror(scratch, length):
    scratch.write_bytes(BLOB[:length])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_tensors(scratch)


@settings(max_examples=50, deadline=None)
@given(position=st.integers(0, len(BLOB) - 1), bit=st.integers(0, 7))
@example(position=0, bit=0)  # the header length, off by one
@example(position=7, bit=7)  # the header length, enormous
@example(position=8, bit=0)  # the header's opening brace
@example(position=HEADER_END - 1, bit=0)  # the header's last (padding) byte
@example(position=HEADER_END, bit=0)  # the first data byte
@example(position=len(BLOB) - 1, bit=7)  # the last data byte
def test_bit_flipped_file_raises_or_loads_identically(scratch, position, bit):
    """A flipped bit anywhere is a ValueError, or (a flip that renames a metadata key, say) a
    parse whose tensors hold exactly the original numbers: never silently different weights.
    In the data, the checksum minift writes into every file catches every single flip."""
    flipped = bytearray(BLOB)
    flipped[position] ^= 1 << bit
    scratch.write_bytes(bytes(flipped))
    if position < 8 or position >= HEADER_END:
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_tensors(scratch)
        return
    try:
        tensors, _ = load_tensors(scratch)
    except ValueError as e:
        assert "not a readable safetensors file" in str(e)
        return
    _, header = _header(BLOB)
    original = {
        name: BLOB[HEADER_END + entry["data_offsets"][0] : HEADER_END + entry["data_offsets"][1]]
        for name, entry in header.items()
        if name != "__metadata__"
    }
    assert sorted(t.tobytes() for t in tensors.values()) == sorted(original.values())


@pytest.mark.parametrize(
    "content",
    [
        b"",
        pickle.dumps({"wte.weight": [1.0, 2.0]}, protocol=4),
        b'{"model_type": "gpt2"}\n',
        struct.pack("<Q", 2) + b"[]",  # a header that is JSON but not an object
        struct.pack("<Q", 4) + b"{}  " + b"\x00" * 4,  # data no tensor claims
        struct.pack("<Q", 56)
        + b'{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
        + b"x" * 4,
    ],
    ids=["empty", "pickle", "json", "json-list", "stray-data", "bf16"],
)
def test_files_that_are_not_safetensors_raise_valueerror(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: not a readable safetensors file"):
        load_tensors(path)


def test_header_naming_a_tensor_twice_raises_valueerror(tmp_path):
    entry = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    header = ('{"a":' + entry + ',"a":' + entry + "}").encode()
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x01")
    with pytest.raises(ValueError, match="'a' appears twice"):
        load_tensors(path)


# -- atomic writes ---------------------------------------------------------------------------


def _fail(exception):
    def raise_it(*args, **kwargs):
        raise exception

    return raise_it


@pytest.mark.parametrize("failure", ["write", "fsync", "replace", "interrupt"])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, failure):
    # Tests run as root, for whom chmod cannot make a directory read-only: fail the calls instead.
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the previous checkpoint")
    data = b"new bytes"
    expected = OSError
    if failure == "write":
        data, expected = "text, not bytes", TypeError  # f.write raises halfway through
    elif failure == "fsync":
        monkeypatch.setattr(os, "fsync", _fail(OSError(errno.EIO, "I/O error")))
    elif failure == "replace":
        monkeypatch.setattr(os, "replace", _fail(OSError(errno.ENOSPC, "No space left")))
    else:
        monkeypatch.setattr(os, "replace", _fail(KeyboardInterrupt()))
        expected = KeyboardInterrupt
    with pytest.raises(expected) as info:
        atomic_write_bytes(target, data)
    if expected is OSError:
        assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left
    assert target.read_bytes() == b"the previous checkpoint"


def test_failed_first_write_leaves_no_target(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _fail(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        save_model(_make(GPT), tmp_path / "run")
    assert os.listdir(tmp_path / "run") == []


def test_unwritable_directory_raises_oserror_naming_the_path(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing" / "a.json")):
        atomic_write_json(tmp_path / "missing" / "a.json", {})
    denied = PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", _fail(denied))
    with pytest.raises(PermissionError, match=f"cannot write {tmp_path / 'a.json'}"):
        atomic_write_json(tmp_path / "a.json", {})
    assert os.listdir(tmp_path) == []


def test_config_is_written_after_the_weights(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    save_model(_make(GPT), tmp_path)
    assert renamed == ["model.safetensors", "config.json"]


def test_atomic_write_json_format_and_unencodable_objects(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"z": 1, "a": [None, 2.5]})
    assert path.read_text() == '{\n  "z": 1,\n  "a": [\n    null,\n    2.5\n  ]\n}\n'
    with pytest.raises(ValueError):
        atomic_write_json(path, {"lr": float("nan")})  # NaN is not JSON
    assert json.loads(path.read_text()) == {"z": 1, "a": [None, 2.5]}


# -- the format on disk ----------------------------------------------------------------------


def test_config_json_is_huggingface_gpt2_compatible(tmp_path):
    config = GPTConfig(
        vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8, dropout=0.1, pad_token_id=0
    )
    save_model(GPT(config, dtype=np.float64), tmp_path / "lm")
    saved = read_json(tmp_path / "lm" / "config.json", "config")
    minift_section = saved.pop("minift")
    assert saved == {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 11,
        "n_positions": 8,
        "n_ctx": 8,
        "n_embd": 8,
        "n_layer": 2,
        "n_head": 2,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "torch_dtype": "float64",
    }
    assert minift_section == {**config.to_dict(), "class": "GPT", "dtype": "float64"}
    _, metadata = load_tensors(tmp_path / "lm" / "model.safetensors")
    assert metadata["format"] == "pt"  # without it Hugging Face's loader refuses the file
    assert set(metadata) == {"format", "minift_sha256", "minift_config_sha256"}

    save_model(GPTForSequenceClassification(config, num_labels=3), tmp_path / "clf")
    saved = read_json(tmp_path / "clf" / "config.json", "config")
    assert saved["architectures"] == ["GPT2ForSequenceClassification"]
    assert saved["num_labels"] == 3
    assert saved["minift"]["class"] == "GPTForSequenceClassification"
    assert saved["minift"]["num_labels"] == 3


def test_file_is_safetensors_not_pickle(tmp_path):
    model = _make(GPT, seed=2)
    save_model(model, tmp_path)
    blob = (tmp_path / "model.safetensors").read_bytes()
    assert blob[:1] != b"\x80" and blob[:2] != b"PK"  # neither a pickle nor torch's zip
    n, header = _header(blob)
    assert blob[8:9] == b"{"
    state = model.state_dict()
    assert header.keys() - {"__metadata__"} == state.keys()
    for name, value in state.items():  # the tensors are raw little-endian bytes at their offsets
        begin, end = header[name]["data_offsets"]
        assert header[name]["dtype"] == "F32" and header[name]["shape"] == list(value.shape)
        assert blob[8 + n + begin : 8 + n + end] == value.astype("<f4").tobytes(), name


def test_shared_params_stay_shared_after_load(tmp_path):
    def share_mlp(model):  # parameter sharing (A3): block 1 reuses block 0's c_fc weight
        model.h[1].mlp.c_fc.weight = model.h[0].mlp.c_fc.weight
        return model

    source = share_mlp(_make(GPT, seed=1))
    save_model(source, tmp_path / "shared")
    tensors, _ = load_tensors(tmp_path / "shared" / "model.safetensors")
    assert "h.1.mlp.c_fc.weight" not in tensors  # stored once, under its first name
    assert "lm_head.weight" not in tensors  # the tied head is wte

    target = share_mlp(_make(GPT, seed=2))
    arrays_before = {name: p.value for name, p in target.named_parameters().items()}
    load_weights(target, tmp_path / "shared")
    assert target.h[1].mlp.c_fc.weight is target.h[0].mlp.c_fc.weight
    for name, p in target.named_parameters().items():
        assert p.value is arrays_before[name], name  # copied INTO the existing arrays
    _assert_same_state(target.state_dict(), source.state_dict())
    assert np.array_equal(target.forward(IDX), source.forward(IDX))

    # A classifier built on a language model shares its body: loading one loads the other.
    lm = _make(GPT, seed=3)
    classifier = GPTForSequenceClassification.from_lm(lm, num_labels=3)
    save_model(_make(GPTForSequenceClassification, seed=4), tmp_path / "clf")
    load_weights(classifier, tmp_path / "clf")
    body = {k: v for k, v in classifier.state_dict().items() if k != "score.weight"}
    _assert_same_state(lm.state_dict(), body)

    # Sharing is part of the model, so a checkpoint with sharing does not fit one without.
    with pytest.raises(ValueError, match=r"missing keys \['h.1.mlp.c_fc.weight'\]"):
        load_weights(_make(GPT), tmp_path / "shared")


def test_module_exports_what_the_rest_of_minift_uses():
    for name in ckpt.__all__:
        assert hasattr(ckpt, name), name


def test_training_choices_may_differ_from_the_checkpoint(tmp_path):
    """dropout and pad_token_id do not change what the weights mean, so they may differ."""
    saved = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))
    save_model(saved, tmp_path)
    other = GPT(
        GPTConfig(
            vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8, dropout=0.2, pad_token_id=0
        )
    )
    load_weights(other, tmp_path)
    np.testing.assert_array_equal(other.wte.weight.value, saved.wte.weight.value)


def test_an_edited_config_is_caught_by_its_checksum(tmp_path):
    """A changed number in config.json (a flipped bit, a hand edit) would silently change the
    model; the weights file remembers the config it was saved with."""
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))
    save_model(model, tmp_path)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    raw["minift"]["layer_norm_eps"] = 1e-6
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not the config model.safetensors was saved with"):
        load_weights(GPT(model.config), tmp_path)


# -- every way a model folder can be damaged: one class each, for both loaders ----------------


def _rewrite(directory: Path, edit) -> None:
    """Rewrite model.safetensors with ``edit`` applied, its checksums valid again: a damage that
    only the loader's own checks can catch."""
    tensors, metadata = load_tensors(directory / "model.safetensors")
    edit(tensors)
    save_tensors(directory / "model.safetensors", tensors, metadata)


def _set(name, value):
    return lambda tensors: tensors.update({name: value})


def _with_entry(name, index, value):
    def edit(tensors):
        tensors[name] = tensors[name].copy()
        tensors[name][index] = value

    return edit


def _rename_digest_key(directory: Path) -> None:
    """One flipped bit in the header renames minift_sha256: the layout stays valid."""
    path = directory / "model.safetensors"
    blob = path.read_bytes()
    assert blob.count(b'"minift_sha256"') == 1
    path.write_bytes(blob.replace(b'"minift_sha256"', b'"minift_sha257"'))


# (damage to the saved folder, the file the error must name, a fragment of the message)
MODEL_FOLDER_DAMAGE = {
    "weights-a-folder": (
        lambda d: replace_by_folder(d / "model.safetensors"),
        "model.safetensors",
        "a folder, expected a file",
    ),
    "weights-a-link-to-a-folder": (
        lambda d: replace_by_link_to_folder(d / "model.safetensors"),
        "model.safetensors",
        "a folder, expected a file",
    ),
    "config-a-folder": (
        lambda d: replace_by_folder(d / "config.json"),
        "config.json",
        "a folder, expected a file",
    ),
    "config-a-dangling-link": (
        lambda d: dangling_link(d / "config.json"),
        "config.json",
        "no such file",
    ),
    "nan": (
        lambda d: _rewrite(d, _with_entry("h.1.attn.c_proj.weight", (2, 3), np.nan)),
        "model.safetensors",
        "h.1.attn.c_proj.weight: holds nan at (2, 3)",
    ),
    "inf": (
        lambda d: _rewrite(d, _with_entry("ln_f.bias", 0, -np.inf)),
        "model.safetensors",
        "ln_f.bias: holds -inf at (0,)",
    ),
    "float64-in-a-float32-model": (
        lambda d: _rewrite(d, _set("wpe.weight", np.zeros((8, 8), np.float64))),
        "model.safetensors",
        "wpe.weight: expected dtype float32",
    ),
    "int32": (
        lambda d: _rewrite(d, _set("ln_f.bias", np.zeros(8, np.int32))),
        "model.safetensors",
        "ln_f.bias: expected dtype float32",
    ),
    "a-shape-that-broadcasts": (
        lambda d: _rewrite(d, _set("ln_f.weight", np.ones(1, np.float32))),
        "model.safetensors",
        "ln_f.weight: expected shape (8,), got (1,)",
    ),
    "digest-key-renamed": (
        _rename_digest_key,
        "model.safetensors",
        "no minift_sha256 in its header",
    ),
}


@pytest.mark.parametrize("damage", list(MODEL_FOLDER_DAMAGE))
@pytest.mark.parametrize("loader", ["load_model", "load_weights"])
def test_a_damaged_model_folder_is_refused_naming_file_and_field(tmp_path, loader, damage):
    from minift.errors import FileFormatError

    folder = tmp_path / "run"
    save_model(_make(GPT), folder)
    apply, file, fragment = MODEL_FOLDER_DAMAGE[damage]
    apply(folder)
    on_disk = disk_state(tmp_path)
    model = _make(GPT, seed=9)
    before = model.state_dict()
    with pytest.raises(FileFormatError) as info:
        load_model(folder) if loader == "load_model" else load_weights(model, folder)
    assert str(folder / file) in str(info.value)
    assert fragment in str(info.value)
    _assert_same_state(model.state_dict(), before)
    assert disk_state(tmp_path) == on_disk


@pytest.mark.parametrize("loader", ["load_model", "load_weights"])
def test_a_file_given_as_the_model_folder_is_refused_naming_it(tmp_path, loader):
    from minift.errors import FileFormatError

    save_model(_make(GPT), tmp_path / "run")
    file = tmp_path / "run" / "model.safetensors"
    model = _make(GPT, seed=9)
    before = model.state_dict()
    with pytest.raises(FileFormatError, match=f"{file}: a file, expected a model folder"):
        load_model(file) if loader == "load_model" else load_weights(model, file)
    _assert_same_state(model.state_dict(), before)


def test_a_folder_without_minifts_section_may_lack_the_checksum(tmp_path):
    """Only a folder minift wrote must carry minift's checksum: Hugging Face's files do not."""
    model = _make(GPT)
    save_model(model, tmp_path)
    config = read_json(tmp_path / "config.json", "config")
    del config["minift"]
    atomic_write_json(tmp_path / "config.json", config)
    tensors, _ = load_tensors(tmp_path / "model.safetensors")
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = _make(GPT, seed=9)
    load_weights(loaded, tmp_path)
    _assert_same_state(loaded.state_dict(), model.state_dict())


def test_a_broadcastable_but_wrong_shape_is_refused_by_every_model_loader(tmp_path):
    """ln_f.weight of shape (1,) would broadcast into the (8,) gain (every channel the same
    number) if a loader copied without comparing shapes; each loader names it instead."""
    from minift import hub

    save_model(_make(GPT), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update({"ln_f.weight": np.ones(1, np.float32)}))
    _load_fails_naming(tmp_path, "ln_f.weight: expected shape (8,), got (1,)")
    for load in (load_model, hub.from_pretrained):
        with pytest.raises(ValueError, match=r"ln_f.weight: expected shape \(8,\), got \(1,\)"):
            load(tmp_path)

    # the same tensor in a folder as Hugging Face writes GPT-2 (no "minift" section)
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    tensors = {f"transformer.{k}": v for k, v in _make(GPT).state_dict().items()}
    tensors["transformer.ln_f.weight"] = np.ones(1, np.float32)
    save_tensors(hf_folder / "model.safetensors", tensors, {"format": "pt"})
    hf_config = {
        "model_type": "gpt2",
        "vocab_size": TINY.vocab_size,
        "n_positions": TINY.block_size,
        "n_embd": TINY.d_model,
        "n_layer": TINY.n_layer,
        "n_head": TINY.n_head,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    }
    (hf_folder / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError) as info:
        hub.from_pretrained(hf_folder)
    message = str(info.value)
    assert str(hf_folder / "model.safetensors") in message
    assert "'transformer.ln_f.weight': expected shape (8,)" in message and "got (1,)" in message
