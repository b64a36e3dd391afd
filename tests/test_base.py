"""peft/base.py and its neighbours (targets.py, counting.py, peft_files.py): target matching as
PEFT does it, freezing, counting, PEFT's line, adapter files."""

import json
import re

import numpy as np
import pytest
from helpers import as_if_written_elsewhere
from hypothesis import given, settings
from hypothesis import strategies as st

import minift
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
    count_parameters,
    get_peft_model,
    match_target_modules,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)


def gpt(config=TINY):
    return minift.GPT(config, seed=0, dtype=np.float64)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["c_attn"], ["h.0.attn.c_attn", "h.1.attn.c_attn"]),
        (["attn.c_proj"], ["h.0.attn.c_proj", "h.1.attn.c_proj"]),
        (["c_proj"], ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]),
        (r"h\.1\..*c_(attn|fc)", ["h.1.attn.c_attn", "h.1.mlp.c_fc"]),
        (["h.0.mlp.c_fc"], ["h.0.mlp.c_fc"]),
        # Hugging Face's names, as PEFT writes them, select the same layers
        (["transformer.h.0.mlp.c_fc"], ["h.0.mlp.c_fc"]),
        (r".*transformer\.h\.\d+\.attn\.c_attn", ["h.0.attn.c_attn", "h.1.attn.c_attn"]),
        (r"transformer\.h\.1\.mlp\.c_fc", ["h.1.mlp.c_fc"]),
    ],
)
def test_targets_match_as_peft_matches_them(targets, expected):
    assert match_target_modules(gpt(), targets) == expected


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                r"h\.0",
                r"h\.1",
                r"h\.\d+",
                r".*",
                r"transformer\.h\.\d+",
                r".*\.h\.1",
                r"(transformer\.)?h\.0",
            ]
        ),
        min_size=1,
        max_size=2,
    ),
    st.lists(
        st.sampled_from([r"attn\.c_attn", r"mlp\.c_fc", r"\w+\.c_proj", r"mlp\..*"]), min_size=1
    ),
)
def test_a_written_regex_selects_on_hugging_faces_names_what_minift_selected(heads, tails):
    """What PEFT will do with the file (fullmatch on transformer.h.…) equals what minift did."""
    from minift.peft.targets import peft_target_modules

    regex = "|".join(f"{h}\\.{t}" for h in heads for t in tails)
    model = gpt()
    candidates = [n for n, m in model.named_modules() if isinstance(m, minift.nn.Linear) and n]
    try:
        chosen = match_target_modules(model, regex)
    except ValueError:
        return  # matches nothing: refused before anything is written
    written = peft_target_modules(regex, chosen, candidates)
    assert isinstance(written, str)
    hf_selected = [n for n in candidates if re.fullmatch(written, f"transformer.{n}")]
    assert hf_selected == chosen
    assert match_target_modules(model, written) == chosen  # and read back by minift


def test_a_regex_must_match_the_whole_name():
    with pytest.raises(ValueError, match="matched no Linear module"):
        match_target_modules(gpt(), "c_attn")  # fullmatch: "c_attn" is not "h.0.attn.c_attn"


def test_get_peft_model_freezes_the_model_and_trains_modules_to_save():
    clf = minift.GPTForSequenceClassification(TINY, num_labels=3, dtype=np.float64)
    peft = get_peft_model(clf, LoraConfig(r=2, modules_to_save=["score"]))
    trainable = {n for n, p in peft.named_parameters().items() if p.trainable}
    assert trainable == {
        "score.weight",
        "h.0.attn.c_attn.lora_A",
        "h.0.attn.c_attn.lora_B",
        "h.1.attn.c_attn.lora_A",
        "h.1.attn.c_attn.lora_B",
    }
    with pytest.raises(ValueError, match=r"modules_to_save: no module 'head'.*'score'"):
        get_peft_model(
            minift.GPTForSequenceClassification(TINY, 2), LoraConfig(modules_to_save=["head"])
        )


def test_print_trainable_parameters_prints_peft_line(capsys):
    peft = get_peft_model(gpt(), LoraConfig(r=2))
    peft.print_trainable_parameters()
    trainable = 2 * 2 * (8 + 24)
    total = gpt().num_parameters() + trainable
    expected = (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}\n"
    )
    assert capsys.readouterr().out == expected


def test_count_parameters_counts_a_shared_param_once_and_by_module():
    model = gpt()
    full = count_parameters(model)
    model.h[1].mlp.c_fc.weight = model.h[0].mlp.c_fc.weight
    shared = count_parameters(model)
    assert full.total - shared.total == 8 * 32
    assert shared.by_module["h.0.mlp.c_fc"] == {"trainable": 8 * 32 + 32, "frozen": 0}
    assert shared.by_module["h.1.mlp.c_fc"] == {"trainable": 32, "frozen": 0}
    assert shared.trainable_percent == 100.0


def test_peft_model_reaches_the_models_attributes_and_modes():
    peft = get_peft_model(gpt(), LoraConfig(r=1))
    assert peft.config is TINY and len(peft.h) == 2
    peft.eval()
    assert not peft.training and not peft.base_model.training and not peft.h[0].attn.training
    with pytest.raises(AttributeError):
        peft.no_such_attribute  # noqa: B018
    with pytest.raises(TypeError, match="model: already a PeftModel"):
        get_peft_model(peft, LoraConfig())
    with pytest.raises(TypeError, match="peft_config: expected a PeftConfig"):
        get_peft_model(gpt(), {"r": 8})


def test_unload_restores_the_base_model():
    model = gpt()
    idx = np.array([[1, 2, 3]])
    base = model.forward(idx)
    peft = get_peft_model(model, LoraConfig(r=2))
    peft.h[0].attn.c_attn.lora_B.value[...] = 1.0
    assert not np.allclose(peft.forward(idx), base)
    plain = peft.unload()
    np.testing.assert_array_equal(plain.forward(idx), base)
    assert isinstance(plain.h[0].attn.c_attn, minift.nn.Linear)


@pytest.mark.parametrize("is_trainable", [False, True])
def test_from_pretrained_for_inference_is_frozen_and_in_eval_mode_as_pefts(tmp_path, is_trainable):
    """PEFT's load_adapter: "Set model in evaluation mode to deactivate Dropout modules"."""
    get_peft_model(gpt(), LoraConfig(r=2, lora_dropout=0.5)).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(gpt(), tmp_path, is_trainable=is_trainable)
    modes = {m.training for _, m in loaded.named_modules()} | {loaded.training}
    assert modes == {is_trainable}
    assert any(p.trainable for p in loaded.named_parameters().values()) == is_trainable


def test_adapter_config_with_unknown_settings_is_refused(tmp_path):
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(tmp_path)
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")  # so edits pass its checksum
    path = tmp_path / "adapter_config.json"
    raw = json.loads(path.read_text())
    raw.update(task_type="CAUSAL_LM", inference_mode=True, layers_to_transform=None)
    path.write_text(json.dumps(raw))
    PeftModel.from_pretrained(gpt(), tmp_path)  # PEFT's neutral fields are fine
    raw["lora_bias"] = True
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"fields minift does not implement: lora_bias=True"):
        PeftModel.from_pretrained(gpt(), tmp_path)
    raw["peft_type"] = "BOFT"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match='json: peft_type: expected one of .*"LORA".*, got "BOFT"'):
        PeftModel.from_pretrained(gpt(), tmp_path)


def test_adapter_file_with_missing_or_extra_keys_is_refused(tmp_path):
    from minift.checkpoint import load_tensors, save_tensors

    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors, _ = load_tensors(weights)
    key = next(iter(tensors))
    tensors["base_model.model.transformer.h.9.attn.c_attn.lora_A.weight"] = tensors.pop(key)
    save_tensors(weights, tensors)
    with pytest.raises(ValueError) as err:
        PeftModel.from_pretrained(gpt(), tmp_path)
    assert f"missing keys ['{key}']" in str(err.value) and "unexpected keys" in str(err.value)


def test_truncated_adapter_file_is_a_clear_error(tmp_path):
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PeftModel.from_pretrained(gpt(), tmp_path)


ADAPTERS = {  # every method whose adapter PEFT's file format carries
    "lora": lambda: LoraConfig(r=2, target_modules=["c_attn", "c_fc"]),
    "dora": lambda: LoraConfig(r=2, use_dora=True),
    "adalora": lambda: AdaLoraConfig(init_r=2, target_r=1, total_step=10),
    "ia3": lambda: IA3Config(),
    "adapter": lambda: AdapterConfig(bottleneck_size=2),
    "bitfit": lambda: BitFitConfig(),
    "sparse": lambda: SparseConfig(density=0.5),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=2),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=2),
}


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def saved_adapter(request, tmp_path_factory):
    """(directory, logits, idx) of an adapter whose every trainable value was moved off its
    initial one, so that a load that silently kept or changed any of them would show."""
    directory = tmp_path_factory.mktemp(request.param)
    peft = get_peft_model(gpt(), ADAPTERS[request.param]())
    rng = np.random.default_rng(0)
    for param in peft.named_parameters().values():
        if param.trainable:
            param.value[...] += rng.normal(0.0, 0.5, param.value.shape)
    peft.save_pretrained(directory)
    idx = np.array([[1, 2, 3, 4]])
    return directory, peft.forward(idx), idx


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_adapter_loader_survives_truncated_and_bit_flipped_files(
    saved_adapter, tmp_path_factory, data
):
    """A damaged adapter gives a clear error naming the damaged file every time, or (a flip that
    changes nothing, in a JSON space, say) the very same model; never a crash of another kind, a
    hang, or a model that silently computes something else (the checksums minift writes catch
    changed numbers)."""
    source, expected, idx = saved_adapter
    directory = tmp_path_factory.mktemp("damaged")
    name = data.draw(st.sampled_from(["adapter_model.safetensors", "adapter_config.json"]))
    for f in source.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    raw = bytearray((source / name).read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        bit = data.draw(st.integers(0, 8 * len(raw) - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
    (directory / name).write_bytes(bytes(raw))
    try:
        loaded = PeftModel.from_pretrained(gpt(), directory)
    except (ValueError, TypeError, FileNotFoundError) as e:
        assert name in str(e), f"the message should name {name}: {e}"
        return
    np.testing.assert_array_equal(loaded.forward(idx), expected)  # loaded: then it is the same


def test_a_peft_classifier_file_naming_both_usual_heads_loads_and_nothing_else_is_let_pass(
    tmp_path,
):
    """PEFT writes modules_to_save ["classifier", "score"] for any SEQ_CLS adapter."""
    cfg = minift.GPTConfig(**{**TINY.to_dict(), "pad_token_id": 0})

    def classifier():
        return minift.GPTForSequenceClassification(cfg, num_labels=2, dtype=np.float64)

    get_peft_model(classifier(), LoraConfig(r=2, modules_to_save=["score"])).save_pretrained(
        tmp_path
    )
    as_if_written_elsewhere(tmp_path / "adapter_model.safetensors")
    path = tmp_path / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert raw["task_type"] == "SEQ_CLS"
    raw["modules_to_save"] = ["classifier", "score"]
    path.write_text(json.dumps(raw))
    loaded = PeftModel.from_pretrained(classifier(), tmp_path, is_trainable=True)
    assert loaded.peft_config.modules_to_save == ["score"] and loaded.score.weight.trainable
    for task_type, modules in (("CAUSAL_LM", ["classifier", "score"]), ("SEQ_CLS", ["head"])):
        path.write_text(json.dumps({**raw, "task_type": task_type, "modules_to_save": modules}))
        with pytest.raises(ValueError, match="modules_to_save: no module '(classifier|head)'"):
            PeftModel.from_pretrained(classifier(), tmp_path)
