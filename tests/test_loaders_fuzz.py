"""Every loader of saved folders, fed damaged copies: one clear error, nothing changed.

The loaders: PeftModel.from_pretrained for the nine adapter formats (LoRA, DoRA, AdaLoRA, IA3,
prompt and prefix tuning in PEFT's format; bottleneck adapters, BitFit and sparse fine-tuning in
minift's), hub.from_pretrained for Hugging Face GPT-2 and BERT folders, hub.load_tokenizer for
WordPiece folders and hub.load_sentence_encoder for sentence-transformers folders. Each saved
folder is damaged in each of these ways, file by file:

    truncate           the file cut short (to nothing, to half, by one byte)
    bit flip           one bit flipped, in the files minift's checksums cover
    non-finite         a NaN or +inf written into one tensor (the checksum made to fit)
    wrong dtype        one tensor stored as int32 (the checksum made to fit)
    wrong JSON type    each field of each JSON file given a value of another JSON type
    folder for file    a folder where the file should be
    file for folder    a file passed where the folder should be
    dangling link      a symbolic link to nothing where the file should be

and each case must end in a minift.errors.MiniftError that names the file (and the field or
tensor where there is one) or, where the damage changed nothing that matters (a field minift
ignores, the newline at the end of a JSON file), in the very thing that was saved. Either way
nothing on disk changed, and a model an adapter was to be applied to is as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import as_if_written_elsewhere, disk_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minift
from minift import hub
from minift.bert import BertConfig, BertModel
from minift.checkpoint import load_tensors, save_tensors
from minift.errors import FileFormatError, MiniftError
from minift.gradcheck import randomize_params
from minift.peft import (
    AdaLoraConfig,
    AdapterConfig,
    BitFitConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    SparseConfig,
    get_peft_model,
)
from minift.peft.base import PEFT_TYPES

GPT_CONFIG = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
IDX = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])

# [PAD] first (BERT's pad_token_id 0), the other special tokens last, so that a vocabulary cut
# short loses one of them
VOCAB = ["[PAD]", "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "run", "##ning", "big"]
VOCAB += ["red", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_CONFIG = BertConfig(
    vocab_size=len(VOCAB),
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=10,
)
TEXTS = ["The cats sat on a mat", "a big red dog running on the mat the cat sat on", "Zebra"]


def gpt():
    return minift.GPT(GPT_CONFIG, seed=0, dtype=np.float64)


# -- the folders, as each loader's writer (or Hugging Face's) writes them ------------------------

ADAPTERS = {
    "lora": lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"]),
    "dora": lambda: LoraConfig(r=2, use_dora=True),
    "adalora": lambda: AdaLoraConfig(init_r=2, target_r=1, total_step=10),
    "ia3": lambda: IA3Config(),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=2),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=2),
    "adapter": lambda: AdapterConfig(bottleneck_size=2),
    "bitfit": lambda: BitFitConfig(),
    "sparse": lambda: SparseConfig(density=0.5),
}


def write_adapter(method):
    def write(folder):
        peft = get_peft_model(gpt(), ADAPTERS[method]())
        rng = np.random.default_rng(0)
        for param in peft.parameters():
            if param.trainable:  # off its initial value, so that a value not loaded shows
                param.value[...] += rng.normal(0.0, 0.5, param.value.shape)
        peft.save_pretrained(folder)

    return write


def write_gpt2(folder):
    """As Hugging Face's GPT2LMHeadModel writes it: prefixed names, tied head, mask buffers."""
    folder.mkdir(parents=True, exist_ok=True)
    model = gpt()
    randomize_params(model.named_parameters(), 1)
    tensors = {"transformer." + k: v for k, v in model.state_dict().items()}
    tensors["lm_head.weight"] = model.wte.weight.value.copy()
    n = GPT_CONFIG.block_size
    for i in range(GPT_CONFIG.n_layer):
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((n, n))).reshape(1, 1, n, n)
    save_tensors(folder / "model.safetensors", tensors, {"format": "pt"})
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": GPT_CONFIG.vocab_size,
        "n_positions": n,
        "n_embd": GPT_CONFIG.d_model,
        "n_layer": GPT_CONFIG.n_layer,
        "n_head": GPT_CONFIG.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_bert(folder):
    model = BertModel(BERT_CONFIG, seed=0, dtype=np.float64)
    randomize_params(model.named_parameters(), 2)
    hub.save_pretrained(model, folder)


def write_wordpiece(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "unk_token": "[UNK]",
        "cls_token": {"content": "[CLS]", "lstrip": False, "__type": "AddedToken"},
        "model_max_length": 8,  # shorter than the texts: a change shows in the ids
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_sentence_encoder(folder):
    write_bert(folder)
    write_wordpiece(folder)
    kinds = ["Transformer", "Pooling", "Normalize"]
    paths = ["", "1_Pooling", "2_Normalize"]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(zip(kinds, paths, strict=True))
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}  # fmt: skip
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    settings = {"max_seq_length": 6, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(settings, indent=2) + "\n")


@dataclass
class Loader:
    write: Callable[[Path], None]
    load: Callable[[Path], object]  # for an adapter: (folder, model) -> PeftModel
    output: Callable[[object], np.ndarray]  # what the loaded thing computes
    checksummed: tuple[str, ...]  # the files minift's checksums cover
    adapter: bool = False


LOADERS = {
    **{
        f"adapter-{method}": Loader(
            write_adapter(method),
            lambda folder, model: PeftModel.from_pretrained(model, folder),
            lambda peft: peft.forward(IDX),
            ("adapter_model.safetensors", "adapter_config.json"),
            adapter=True,
        )
        for method in ADAPTERS
    },
    "hf-gpt2": Loader(
        write_gpt2, hub.from_pretrained, lambda m: m.eval().forward(IDX), ("model.safetensors",)
    ),
    "hf-bert": Loader(
        write_bert,
        hub.from_pretrained,
        lambda m: m.eval().forward(IDX),
        ("model.safetensors", "config.json"),
    ),
    "wordpiece": Loader(
        write_wordpiece, hub.load_tokenizer, lambda tok: tok.encode_batch(TEXTS)[0], ()
    ),
    "sentence-encoder": Loader(
        write_sentence_encoder,
        hub.load_sentence_encoder,
        lambda enc: enc.encode(TEXTS),
        ("model.safetensors", "config.json"),
    ),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (folder, what the undamaged folder loads to compute); written once."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name) / "saved"
            LOADERS[name].write(folder)
            cache[name] = folder, LOADERS[name].output(load(name, folder, gpt()))
        return cache[name]

    return get


def load(name, folder, model):
    loader = LOADERS[name]
    return loader.load(folder, model) if loader.adapter else loader.load(folder)


# -- what must hold after every damaged load ------------------------------------------------------


def model_state(model) -> tuple:
    params = {n: (p.value.copy(), p.trainable) for n, p in model.named_parameters().items()}
    modules = [(n, type(m).__name__) for n, m in model.named_modules()]
    return params, modules, model.forward(IDX)


def assert_same_model(before, after):
    (params0, modules0, out0), (params1, modules1, out1) = before, after
    assert modules1 == modules0, "the model's modules changed"
    assert params1.keys() == params0.keys()
    for name, (value, trainable) in params0.items():
        np.testing.assert_array_equal(params1[name][0], value, err_msg=name)
        assert params1[name][1] == trainable, f"{name}: trainable flag changed"
    np.testing.assert_array_equal(out1, out0)


def check_damaged(name, folder, expected, *, names, allow_same=True, root=None):
    """Load the damaged ``folder``: a MiniftError whose message holds every string of
    ``names``, or (``allow_same``) exactly what the undamaged folder computed. The files under
    ``root`` (default: the folder) and the model an adapter goes onto must be unchanged."""
    root = folder if root is None else root
    before = disk_state(root)
    model = gpt()
    model_before = model_state(model)
    try:
        loaded = load(name, folder, model)
    except MiniftError as e:
        message = str(e)
        for part in names:
            assert part in message, f"the message should name {part!r}: {message}"
        assert disk_state(root) == before, "the loader changed a file"
        if LOADERS[name].adapter:
            assert_same_model(model_before, model_state(model))
        return e
    assert allow_same, "the damaged folder loaded"
    np.testing.assert_array_equal(LOADERS[name].output(loaded), expected)
    assert disk_state(root) == before, "the loader changed a file"
    return None


def damaged_copy(saved, name, tmp_path) -> tuple[Path, np.ndarray, list[str]]:
    source, expected = saved(name)
    folder = tmp_path / name
    shutil.copytree(source, folder, symlinks=True)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return folder, expected, files


def fresh_copy(folder: Path, source: Path) -> None:
    shutil.rmtree(folder)
    shutil.copytree(source, folder, symlinks=True)


# -- the damages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_file_cut_short_is_refused_naming_it(saved, tmp_path, name):
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    source = saved(name)[0]
    for rel in files:
        data = (source / rel).read_bytes()
        for length in sorted({0, len(data) // 2, len(data) - 1}):
            fresh_copy(folder, source)
            (folder / rel).write_bytes(data[:length])
            # one byte off a JSON or text file may be just its closing newline: then the same
            check_damaged(name, folder, expected, names=[rel], allow_same=length == len(data) - 1)


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_flipped_bit_where_minift_keeps_a_checksum_is_refused_naming_the_file(
    saved, tmp_path_factory, name, data
):
    """Files minift wrote carry checksums; Hugging Face's vocab.txt and configs do not, and a
    flipped bit there can make another valid file (one token for another), so those are left
    to the other damages."""
    checksummed = LOADERS[name].checksummed
    if not checksummed:
        return
    folder, expected, _ = damaged_copy(saved, name, tmp_path_factory.mktemp("flip"))
    rel = data.draw(st.sampled_from(checksummed))
    raw = bytearray((folder / rel).read_bytes())
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    (folder / rel).write_bytes(bytes(raw))
    check_damaged(name, folder, expected, names=[rel])


def rewrite_tensor(path: Path, change) -> str:
    """Apply ``change`` to the first parameter tensor of ``path`` (not a buffer), keeping the
    metadata and making minift's tensor checksum fit, so that only the check for what
    ``change`` did can catch it. Returns the tensor's name."""
    tensors, metadata = load_tensors(path)
    buffers = (".attn.bias", ".attn.masked_bias", "position_ids")
    key = next(
        k for k in sorted(tensors) if tensors[k].dtype.kind == "f" and not k.endswith(buffers)
    )
    tensors[key] = change(tensors[key])
    save_tensors(path, tensors, {k: v for k, v in metadata.items() if k != "minift_sha256"})
    return key


def with_value(value):
    def change(array):
        array = array.copy()
        array.flat[array.size // 2] = value
        return array

    return change


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", sorted(n for n in LOADERS if n != "wordpiece"))
def test_a_non_finite_value_is_refused_naming_file_and_tensor(saved, tmp_path, name, value):
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    for rel in (f for f in files if f.endswith(".safetensors")):
        key = rewrite_tensor(folder / rel, with_value(value))
        error = check_damaged(name, folder, expected, names=[rel, key], allow_same=False)
        assert isinstance(error, FileFormatError) and error.field == key


@pytest.mark.parametrize("name", sorted(n for n in LOADERS if n != "wordpiece"))
def test_a_tensor_of_integers_is_refused_naming_file_and_tensor(saved, tmp_path, name):
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    for rel in (f for f in files if f.endswith(".safetensors")):
        key = rewrite_tensor(folder / rel, lambda a: np.round(a * 10).astype(np.int32))
        check_damaged(name, folder, expected, names=[rel, key], allow_same=False)


def other_json_type(value):
    """A value of another JSON type, that a careless reader might still take for ``value``."""
    if isinstance(value, bool):
        return "false" if value else "true"  # truthy as a string, whichever it is
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return 7
    if isinstance(value, dict):
        return [value]
    return {"value": 1}  # null


def json_fields(obj):
    """(path to the field, key) of every field: an object's keys, a list's objects' keys."""
    if isinstance(obj, dict):
        return [((), key) for key in obj]
    return [((i,), key) for i, item in enumerate(obj) if isinstance(item, dict) for key in item]


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_field_of_the_wrong_json_type_is_refused_naming_file_and_field(saved, tmp_path, name):
    """Each field in turn; a field the loader does not read may load the same thing. The
    config checksums are dropped first (as in a file another tool wrote), so that the field's
    own check is what must catch it."""
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    source = saved(name)[0]
    for rel in (f for f in files if f.endswith(".json")):
        original = json.loads((source / rel).read_text())
        for where, key in json_fields(original):
            fresh_copy(folder, source)
            for weights in folder.glob("*.safetensors"):
                as_if_written_elsewhere(weights)
            edited = json.loads(json.dumps(original))
            target = edited[where[0]] if where else edited
            target[key] = other_json_type(target[key])
            (folder / rel).write_text(json.dumps(edited))
            check_damaged(name, folder, expected, names=[rel, key])


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_folder_where_a_file_should_be_is_refused_naming_it(saved, tmp_path, name):
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    source = saved(name)[0]
    for rel in files:
        fresh_copy(folder, source)
        (folder / rel).unlink()
        (folder / rel).mkdir()
        check_damaged(name, folder, expected, names=[rel], allow_same=False)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_dangling_link_where_a_file_should_be_is_refused_naming_it(saved, tmp_path, name):
    """Never taken for a missing optional file (a tokenizer_config.json that silently vanished
    would turn a cased tokenizer uncased)."""
    folder, expected, files = damaged_copy(saved, name, tmp_path)
    source = saved(name)[0]
    for rel in files:
        fresh_copy(folder, source)
        (folder / rel).unlink()
        (folder / rel).symlink_to(tmp_path / "nowhere")
        check_damaged(name, folder, expected, names=[rel], allow_same=False)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_file_where_a_folder_should_be_is_refused_naming_it(saved, tmp_path, name):
    folder, expected, _ = damaged_copy(saved, name, tmp_path)
    source = saved(name)[0]
    shutil.rmtree(folder)
    folder.write_bytes(b"not a folder")
    check_damaged(name, folder, expected, names=[str(folder)], allow_same=False, root=tmp_path)
    for sub in (p for p in source.rglob("*") if p.is_dir()):  # 1_Pooling, …
        rel = str(sub.relative_to(source))
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
        shutil.copytree(source, folder)
        shutil.rmtree(folder / rel)
        (folder / rel).write_bytes(b"not a folder")
        check_damaged(name, folder, expected, names=[rel], allow_same=False)


# -- the values found to slip through before, one each ---------------------------------------------

CASES = [  # (loader, file, its new content: bytes, or the fields to set; what the error says)
    (
        "adapter-lora",
        "adapter_config.json",
        {"lora_dropout": "0.1"},
        'lora_dropout: expected a finite number, got "0.1"',
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"peft_type": ["LORA"]},
        "peft_type: expected one of " + ", ".join(f'"{t}"' for t in sorted(PEFT_TYPES)),
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"target_modules": r"h\.(\d"},
        "target_modules: not a valid regular expression",
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"use_dora": "yes"},
        'use_dora: expected true or false, got "yes"',
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"use_rslora": "no"},
        'use_rslora: expected true or false, got "no"',
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"use_rslora": 1},
        "use_rslora: expected true or false, got 1",
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"lora_alpha": -4},
        "lora_alpha: expected a number > 0, got -4",
    ),
    (
        "adapter-lora",
        "adapter_config.json",
        {"lora_alpha": 0},
        "lora_alpha: expected a number > 0, got 0",
    ),
    ("adapter-lora", "adapter_config.json", {"r": 2.0}, "r: expected an integer, got 2.0"),
    (
        "adapter-lora",
        "adapter_config.json",
        {"target_modules": ["nosuch"]},
        "target_modules: ['nosuch'] matched no",
    ),
    (
        "adapter-ia3",
        "adapter_config.json",
        {"feedforward_modules": ["nosuch"]},
        "feedforward_modules: expected a subset",
    ),
    ("adapter-adalora", "adapter_config.json", {"beta1": 1.5}, "beta1: expected a value in (0, 1)"),
    (
        "adapter-prompt",
        "adapter_config.json",
        {"num_virtual_tokens": "2"},
        "num_virtual_tokens: expected an integer or null",
    ),
    ("adapter-sparse", "adapter_config.json", {"density": "0.5"}, "density: expected"),
    (
        "hf-gpt2",
        "config.json",
        {"layer_norm_epsilon": "x"},
        'layer_norm_epsilon: expected a finite number ≥ 0.0, got "x"',
    ),
    (
        "hf-gpt2",
        "config.json",
        {"resid_pdrop": [0.1]},
        "resid_pdrop: expected a number in [0.0, 1.0), got a list",
    ),
    (
        "hf-gpt2",
        "config.json",
        {"pad_token_id": [0]},
        "pad_token_id: expected an integer in [0, 10], got a list",
    ),
    ("hf-gpt2", "config.json", {"n_layer": 2.5}, "n_layer: expected an integer ≥ 1, got 2.5"),
    (
        "hf-gpt2",
        "config.json",
        {"scale_attn_weights": "true"},
        "scale_attn_weights: 'true' is not supported",
    ),
    (
        "hf-bert",
        "config.json",
        {"layer_norm_eps": "1e-12"},
        'layer_norm_eps: expected a finite number ≥ 0.0, got "1e-12"',
    ),
    ("hf-bert", "config.json", {"layer_norm_eps": 0}, "layer_norm_eps: expected > 0"),
    ("wordpiece", "vocab.txt", b"[PAD]\n\xff\xfe\n", "vocabulary is not UTF-8 text"),
    ("wordpiece", "tokenizer_config.json", b"", "tokenizer config is not valid JSON"),
    (
        "wordpiece",
        "tokenizer_config.json",
        b'{"do_lower_case": fa',
        "tokenizer config is not valid JSON",
    ),
    ("wordpiece", "tokenizer_config.json", b'{"a": "\xff"}', "tokenizer config is not UTF-8 text"),
    (
        "wordpiece",
        "tokenizer_config.json",
        b"[]",
        "tokenizer config must be a JSON object, got a list",
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        b"null",
        "tokenizer config must be a JSON object, got null",
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        {"model_max_length": "64"},
        'model_max_length: expected an integer ≥ 1, got "64"',
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        {"do_lower_case": "false"},
        'do_lower_case: expected true or false, got "false"',
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        {"strip_accents": "no"},
        'strip_accents: expected true or false, got "no"',
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        {"unk_token": {"content": 5}},
        'unk_token: expected an AddedToken object with a string "content"',
    ),
    (
        "wordpiece",
        "tokenizer_config.json",
        {"unk_token": "[NOPE]"},
        "unk_token: '[NOPE]' is not in the vocabulary",
    ),
    (
        "sentence-encoder",
        "modules.json",
        b'[{"path": 3, "type": "Transformer"}]',
        "path: expected a string, got 3",
    ),
    (
        "sentence-encoder",
        "sentence_bert_config.json",
        {"max_seq_length": -1},
        "max_seq_length: expected an integer ≥ 2, got -1",
    ),
    (
        "sentence-encoder",
        "sentence_bert_config.json",
        {"max_seq_length": 1.5},
        "max_seq_length: expected an integer ≥ 2, got 1.5",
    ),
    (
        "sentence-encoder",
        "sentence_bert_config.json",
        {"max_seq_length": "8"},
        'max_seq_length: expected an integer ≥ 2, got "8"',
    ),
    (
        "sentence-encoder",
        "sentence_bert_config.json",
        {"max_seq_length": 11},
        "max_seq_length: 11 exceeds the model's max_position_embeddings=10",
    ),
]


@pytest.mark.parametrize(("name", "rel", "content", "message"), CASES)
def test_each_value_that_once_slipped_through_is_refused_naming_file_and_field(
    saved, tmp_path, name, rel, content, message
):
    folder, expected, _ = damaged_copy(saved, name, tmp_path)
    for weights in folder.glob("*.safetensors"):
        as_if_written_elsewhere(weights)  # as a file PEFT wrote: the field's own check must act
    if isinstance(content, bytes):
        (folder / rel).write_bytes(content)
    else:
        (folder / rel).write_text(json.dumps({**json.loads((folder / rel).read_text()), **content}))
    error = check_damaged(name, folder, expected, names=[f"{rel}: {message}"], allow_same=False)
    assert isinstance(error, FileFormatError)


def test_a_special_token_given_as_an_added_token_object_is_read_as_its_content(saved):
    folder, _ = saved("wordpiece")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert isinstance(config["cls_token"], dict)  # the folder the other tests damage has one
    tokenizer = hub.load_tokenizer(folder)
    assert tokenizer.cls_token == "[CLS]" and tokenizer.cls_id == VOCAB.index("[CLS]")
    assert tokenizer.model_max_length == 8 and tokenizer.lowercase


def test_a_vocabulary_larger_than_the_models_embedding_table_is_refused_at_load(saved, tmp_path):
    folder, expected, _ = damaged_copy(saved, "sentence-encoder", tmp_path)
    with (folder / "vocab.txt").open("a", encoding="utf-8") as f:
        f.write("zebra\n")
    check_damaged(
        "sentence-encoder",
        folder,
        expected,
        names=["vocab.txt: 18 tokens, more than the model's vocab_size=17"],
        allow_same=False,
    )
