"""PEFT's adapter files, both ways, for every method minift saves in PEFT's format.

Each method (LoRA, rsLoRA, DoRA, LoRA on a regex, AdaLoRA, IA3, VeRA, LN tuning, prompt tuning,
prefix tuning direct and projected) is saved by minift and loaded by Hugging Face PEFT on a
GPT2LMHeadModel with the same weights, and saved by PEFT and loaded by minift; the logits agree to
1e-10 in float64, PEFT loads minift's file without a warning, every field minift writes is one
PEFT's config class has, and the layers PEFT adapts are the ones minift adapted. Then: prefix
generation through the cache, a pruned AdaLoRA adapter, a sequence classifier (SEQ_CLS) both ways.
The tests without the reference
marker check how adapter_config.json says which layers to adapt.
"""

import contextlib
import json
import logging
import re
import warnings

import numpy as np
import pytest
from helpers import hf_gpt2, import_references

import minift
from minift.gradcheck import randomize_params
from minift.peft import (
    AdaLoraConfig,
    IA3Config,
    LNTuningConfig,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeraConfig,
    get_peft_model,
)
from minift.peft.peft_files import targetable_modules

CONFIG = minift.GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, d_model=8)
N_VIRTUAL = 4
LAYER_NORM_WARNING = "Unsupported layer type '<class 'torch.nn.modules.normalization.LayerNorm'>'"
TOL = 1e-10  # float64 on both sides: only the order of the sums differs

PATTERNS = {
    "r": 2,
    "lora_alpha": 4,
    "target_modules": ["c_attn", "c_fc", "c_proj"],
    # h.1.attn.c_attn ends in "c_attn" too: the first key wins, in dict order. PEFT writes its
    # config with sorted keys, and reads the file in that order: the more specific key must
    # also sort first (".*h" < "c_") for PEFT's model and PEFT's file to mean the same
    "rank_pattern": {r".*h\.1\.attn\.c_attn": 1, "c_attn": 3, "c_fc": 4},
    "alpha_pattern": {"attn.c_proj": 5, "c_attn": 7},
    "layers_to_transform": [1],
    "exclude_modules": ["mlp.c_proj"],
}
ALL_LINEAR = {
    "r": 2,
    "lora_alpha": 4,
    "target_modules": "all-linear",
    "exclude_modules": r".*h\.0\.mlp\..*",
    "rank_pattern": {"mlp.c_proj": 3},
}

# method -> (minift's config, the same method as PEFT's config class name and its fields)
METHODS = {
    "lora": (
        lambda: LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "mlp.c_proj"]),
        ("LoraConfig", {"r": 2, "lora_alpha": 6, "target_modules": ["c_attn", "mlp.c_proj"]}),
    ),
    "rslora": (
        lambda: LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=["c_fc"]),
        ("LoraConfig", {"r": 4, "lora_alpha": 6, "use_rslora": True, "target_modules": ["c_fc"]}),
    ),
    "dora": (
        lambda: LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["c_attn"]),
        ("LoraConfig", {"r": 2, "lora_alpha": 4, "use_dora": True, "target_modules": ["c_attn"]}),
    ),
    "lora_regex": (
        lambda: LoraConfig(
            r=2, lora_alpha=4, target_modules=r"h\.\d+\.attn\.c_attn|h\.1\.mlp\.c_fc"
        ),
        (
            "LoraConfig",
            {
                "r": 2,
                "lora_alpha": 4,
                "target_modules": r".*transformer\.h\.\d+\.attn\.c_attn"
                r"|transformer\.h\.1\.mlp\.c_fc",
            },
        ),
    ),
    # PEFT 0.21's LoRA options: per-layer r and α, blocks, exclusions, and "all-linear"
    "lora_patterns": (
        lambda: LoraConfig(**PATTERNS),
        ("LoraConfig", PATTERNS),
    ),
    "lora_all_linear": (
        lambda: LoraConfig(**ALL_LINEAR),
        ("LoraConfig", ALL_LINEAR),
    ),
    "adalora": (
        lambda: AdaLoraConfig(init_r=3, target_r=2, lora_alpha=5, total_step=10, tinit=2),
        ("AdaLoraConfig", {"init_r": 3, "target_r": 2, "lora_alpha": 5, "total_step": 10}),
    ),
    "ia3": (
        lambda: IA3Config(),  # PEFT's GPT-2 defaults: c_attn, and mlp.c_proj as feed-forward
        (
            "IA3Config",
            {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]},
        ),
    ),
    "vera": (  # the file carries the shared A and B (save_projection): they load both ways
        lambda: VeraConfig(r=4, target_modules=["c_attn", "mlp.c_proj"]),
        ("VeraConfig", {"r": 4, "target_modules": ["c_attn", "mlp.c_proj"]}),
    ),
    "ln_tuning": (  # PEFT's GPT-2 default targets, every LayerNorm, less one
        lambda: LNTuningConfig(exclude_modules=["h.0.ln_2"]),
        ("LNTuningConfig", {"exclude_modules": ["h.0.ln_2"]}),
    ),
    "prompt": (
        lambda: PromptTuningConfig(num_virtual_tokens=N_VIRTUAL),
        ("PromptTuningConfig", {"num_virtual_tokens": N_VIRTUAL}),
    ),
    "prefix": (
        lambda: PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL),
        ("PrefixTuningConfig", {"num_virtual_tokens": N_VIRTUAL}),
    ),
    "prefix_projection": (  # the file holds the projected P, as PEFT's does
        lambda: PrefixTuningConfig(
            num_virtual_tokens=N_VIRTUAL, prefix_projection=True, encoder_hidden_size=5
        ),
        (
            "PrefixTuningConfig",
            {"num_virtual_tokens": N_VIRTUAL, "prefix_projection": True, "encoder_hidden_size": 5},
        ),
    ),
}


def base_model(seed):
    model = minift.GPT(CONFIG, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)
    return model


def tokens(seed, T=6):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (2, T))


@contextlib.contextmanager
def torch_float64(torch):
    """PEFT builds a prompt or prefix encoder in torch's default dtype, whatever the model's."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def recorded_complaints():
    """Every warning and every log record of WARNING or above, from any library, while inside.

    transformers' own deprecation notices about its API (FutureWarning, DeprecationWarning) are
    no comment on the adapter file and are left out.
    """
    complaints = []

    class Handler(logging.Handler):
        def emit(self, record):
            complaints.append(f"log {record.name}: {record.getMessage()}")

    handler = Handler(logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("peft"), logging.getLogger("transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield complaints
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    complaints.extend(
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, (FutureWarning, DeprecationWarning))
    )


def hf_logits(torch, hf, idx):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(idx)).logits.numpy()


def peft_adapted_layers(hf):
    """The layers PEFT adapted, by minift's names (base_model.model.transformer.h.0… -> h.0…)."""
    markers = (".lora_", ".ia3_", ".vera_lambda_", ".ln_tuning_layers.")
    names = {
        re.split("|".join(map(re.escape, markers)), name, maxsplit=1)[0]
        for name, _ in hf.named_parameters()
        if any(m in name for m in markers)
    }
    return sorted(re.sub(r"^base_model\.model\.(transformer\.)?", "", n) for n in names)


def real_positions(method, logits):
    """PEFT's logits for the real tokens: prompt tuning returns the virtual ones' too."""
    return logits[:, N_VIRTUAL:] if method == "prompt" else logits


@pytest.mark.reference
@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_adapter_minift_writes_loads_quietly_in_peft_with_the_same_logits(tmp_path, method):
    torch, _, peft_lib = import_references()
    model = base_model(1)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, METHODS[method][0]())
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 2)
    idx = tokens(3)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    peft_class = getattr(peft_lib, METHODS[method][1][0])
    fields = {f.name for f in peft_class.__dataclass_fields__.values()}
    assert set(saved) <= fields, sorted(set(saved) - fields)
    assert saved["task_type"] == "CAUSAL_LM" and saved["base_model_name_or_path"] is None
    with torch_float64(torch), recorded_complaints() as complaints:
        hf = peft_lib.PeftModel.from_pretrained(hf.eval(), tmp_path / "adapter")
    # PEFT's LNTuningLayer asks each LayerNorm for in/out features, finds none and warns, once per
    # layer: its own get_peft_model says the same, whatever the file; nothing else may complain
    assert [c for c in complaints if LAYER_NORM_WARNING not in c] == []
    got = real_positions(method, hf_logits(torch, hf, idx))
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)
    if not method.startswith(("prompt", "prefix")):
        assert peft_adapted_layers(hf) == sorted(peft._tuner_layers())


@pytest.mark.reference
@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_adapter_peft_writes_loads_in_minift_with_the_same_logits(tmp_path, method):
    torch, _, peft_lib = import_references()
    model = base_model(4)
    hf = hf_gpt2(model, tmp_path / "base")
    class_name, fields = METHODS[method][1]
    theirs = getattr(peft_lib, class_name)(task_type="CAUSAL_LM", **fields)
    if hasattr(theirs, "fan_in_fan_out"):
        theirs.fan_in_fan_out = True  # GPT-2's Conv1D; PEFT would correct it with a warning
    with torch_float64(torch):
        hf = peft_lib.get_peft_model(hf, theirs)
        with torch.no_grad():
            for p in hf.parameters():
                if p.requires_grad:
                    p.copy_(0.3 * torch.randn_like(p))
        hf.eval()
        idx = tokens(5)
        expected = real_positions(method, hf_logits(torch, hf, idx))
        hf.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(model, tmp_path / "adapter")
    np.testing.assert_allclose(loaded.forward(idx), expected, rtol=TOL, atol=TOL)
    if not method.startswith(("prompt", "prefix")):
        assert sorted(loaded._tuner_layers()) == peft_adapted_layers(hf)


@pytest.mark.reference
def test_prefix_tuning_generates_through_its_cache_what_pefts_forward_predicts(tmp_path):
    """minift decodes greedily through the KV cache (the new token at position n + P); the
    reference is the argmax of PEFT's forward on the whole sequence so far. (PEFT 0.21's own
    generate, under transformers 5.25, hands the prefix over as past_key_values beside a cache,
    and transformers ignores it, with a FutureWarning: not a reference for the prefix.)"""
    torch, _, peft_lib = import_references()
    model = base_model(6)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL))
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 7)
    peft.save_pretrained(tmp_path / "adapter")
    idx = tokens(8, T=3)
    ours = peft.generate(idx, CONFIG.block_size - N_VIRTUAL - 3, temperature=0, use_cache=True)
    with torch_float64(torch):
        hf = peft_lib.PeftModel.from_pretrained(hf.eval(), tmp_path / "adapter")
    theirs = idx
    while theirs.shape[1] < ours.shape[1]:
        next_id = hf_logits(torch, hf, theirs)[:, -1].argmax(-1)
        theirs = np.concatenate([theirs, next_id[:, None]], axis=1)
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------------------------------------
# How adapter_config.json names the layers (no reference needed)


def saved_config(peft, folder):
    peft.save_pretrained(folder)
    return json.loads((folder / "adapter_config.json").read_text())


def test_a_minift_regex_is_written_so_it_matches_hugging_faces_names(tmp_path):
    peft = get_peft_model(base_model(0), LoraConfig(r=2, target_modules=r"h\.1\.mlp\.c_fc"))
    written = saved_config(peft, tmp_path)["target_modules"]
    assert re.fullmatch(written, "transformer.h.1.mlp.c_fc")
    assert not re.fullmatch(written, "transformer.h.0.mlp.c_fc")
    loaded = PeftModel.from_pretrained(base_model(0), tmp_path)
    assert loaded._tuner_layers() == peft._tuner_layers() == ["h.1.mlp.c_fc"]


@pytest.mark.parametrize(
    "regex",
    [r".*transformer\.h\.\d+\.attn\.c_attn", r"transformer\.h\.1\.mlp\.c_fc", r".*\.c_proj"],
)
def test_a_peft_regex_selects_the_same_layers_and_is_written_back_unchanged(tmp_path, regex):
    peft = get_peft_model(base_model(0), LoraConfig(r=2, target_modules=regex))
    candidates = targetable_modules(peft, peft._tuner_layers())
    hf_names = [f"transformer.{n}" for n in candidates]
    assert sorted(f"transformer.{n}" for n in peft._tuner_layers()) == sorted(
        n for n in hf_names if re.fullmatch(regex, n)
    )
    assert saved_config(peft, tmp_path)["target_modules"] == regex


def test_a_target_list_is_written_as_the_layers_it_resolved_to(tmp_path):
    """None (the method's default) and short names become the wrapped layers' full names, which
    PEFT matches exactly; read back, they select the same layers."""
    for config in (LoraConfig(r=2), IA3Config()):
        peft = get_peft_model(base_model(0), config)
        saved = saved_config(peft, tmp_path / config.peft_type)
        assert saved["target_modules"] == [f"transformer.{n}" for n in peft._tuner_layers()]
        loaded = PeftModel.from_pretrained(base_model(0), tmp_path / config.peft_type)
        assert loaded._tuner_layers() == peft._tuner_layers()
    assert saved["feedforward_modules"] == [
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_proj",
    ]


def test_a_classifier_adapter_says_seq_cls(tmp_path):
    cfg = minift.GPTConfig(**{**CONFIG.to_dict(), "pad_token_id": 0})
    model = minift.GPTForSequenceClassification(cfg, num_labels=3, seed=0, dtype=np.float64)
    peft = get_peft_model(model, LoraConfig(r=2, modules_to_save=["score"]))
    assert saved_config(peft, tmp_path)["task_type"] == "SEQ_CLS"


def test_prompt_configs_leave_out_what_peft_does_not_know(tmp_path):
    text = PromptTuningConfig(
        num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_token_ids=[1, 2]
    )
    saved = saved_config(get_peft_model(base_model(0), text), tmp_path / "prompt")
    assert "target_modules" not in saved and "prompt_tuning_init_token_ids" not in saved
    assert saved["prompt_tuning_init"] == "RANDOM"  # PEFT refuses TEXT without a tokenizer
    prefix = PrefixTuningConfig(num_virtual_tokens=2)
    saved = saved_config(get_peft_model(base_model(0), prefix), tmp_path / "prefix")
    assert "target_modules" not in saved and saved["task_type"] == "CAUSAL_LM"


# ------------------------------------------------------------------------------------------------
# A sequence classifier: task_type SEQ_CLS, the head trained fully (modules_to_save)


def hf_classifier(torch, transformers, model):
    """transformers' GPT2ForSequenceClassification with ``model``'s weights, in float64."""
    c = model.config
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        num_labels=model.score.weight.shape[1],
        pad_token_id=c.pad_token_id,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=c.layer_norm_eps,
    )
    hf = transformers.GPT2ForSequenceClassification(hf_config).double().eval()
    state = {
        (k if k.startswith("score.") else "transformer." + k): torch.tensor(v)
        for k, v in model.state_dict().items()
    }
    state["score.weight"] = state["score.weight"].T.contiguous()  # nn.Linear: [out, in]
    hf.load_state_dict(state)
    return hf


def classifier(seed):
    cfg = minift.GPTConfig(**{**CONFIG.to_dict(), "pad_token_id": 0})
    model = minift.GPTForSequenceClassification(cfg, num_labels=3, seed=seed, dtype=np.float64)
    randomize_params(model.named_parameters(), seed)
    return model


PADDED = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])  # the first sequence ends in padding


@pytest.mark.reference
@pytest.mark.parametrize("direction", ["minift_to_peft", "peft_to_minift"])
def test_a_classifier_adapter_means_the_same_in_peft_both_ways(tmp_path, direction):
    torch, transformers, peft_lib = import_references()
    model = classifier(9)
    hf = hf_classifier(torch, transformers, model)
    if direction == "minift_to_peft":
        peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, modules_to_save=["score"]))
        randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 10)
        expected = peft.forward(PADDED)
        peft.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
        with recorded_complaints() as complaints:
            hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path)
        assert complaints == []
        got = hf_logits(torch, hf, PADDED)
    else:
        theirs = peft_lib.LoraConfig(
            task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True
        )
        hf = peft_lib.get_peft_model(hf, theirs)
        with torch.no_grad():
            for p in hf.parameters():
                if p.requires_grad:
                    p.copy_(0.3 * torch.randn_like(p))
        hf.eval()
        expected = hf_logits(torch, hf, PADDED)
        hf.save_pretrained(tmp_path)
        got = PeftModel.from_pretrained(model, tmp_path).forward(PADDED)
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)


@pytest.mark.reference
def test_a_pruned_adalora_adapter_minift_writes_gives_pefts_logits(tmp_path):
    """Only the kept ranks are in the file, and rank_pattern says which: PEFT resizes to them."""
    torch, _, peft_lib = import_references()
    from minift.peft import RankAllocator

    model = base_model(11)
    hf = hf_gpt2(model, tmp_path / "base")
    peft = get_peft_model(model, METHODS["adalora"][0]())
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 12)
    pattern = {
        "transformer.h.0.attn.c_attn.lora_E": [True, False, True],
        "transformer.h.1.attn.c_attn.lora_E": [False, True, False],
    }
    RankAllocator(peft).mask_using_rank_pattern(peft, pattern)
    peft.peft_config.rank_pattern = pattern
    idx = tokens(13)
    expected = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    with recorded_complaints() as complaints:
        hf = peft_lib.PeftModel.from_pretrained(hf.eval(), tmp_path / "adapter")
    # PEFT 0.21 checks rank_pattern keys as LoRA's (module names), though AdaLoRA's own name the
    # λ (….lora_E, as its RankAllocator writes them): it says this of its own pruned files too,
    # and then resizes by them all the same (the logits below)
    ignored = "rank_pattern keys did not match any targeted module and were ignored"
    assert [c for c in complaints if ignored not in c] == []
    np.testing.assert_allclose(hf_logits(torch, hf, idx), expected, rtol=TOL, atol=TOL)


@pytest.mark.reference
def test_a_pissa_adapter_means_the_same_residual_and_logits_in_peft_both_ways(tmp_path):
    """PEFT factorises W₀ only in float32 (it refuses float64 for PiSSA), so here, unlike
    everywhere else in this file, the two sides agree to float32's rounding, not float64's: the
    residual and s·B·A to 1e-5 (entries of size ≈ 1, float32's ε ≈ 1.2e-7, an SVD's error a
    few ε·‖W‖), the logits to 1e-4. SVD signs are arbitrary, so B·A is compared, not A and B."""
    torch, transformers, peft_lib = import_references()
    fields = {"r": 2, "lora_alpha": 4, "init_lora_weights": "pissa", "target_modules": ["c_fc"]}
    model = base_model(7)
    hf_gpt2(model, tmp_path / "base")

    def hf32():
        return transformers.GPT2LMHeadModel.from_pretrained(
            tmp_path / "base", torch_dtype=torch.float32
        )

    theirs = peft_lib.get_peft_model(
        hf32(), peft_lib.LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **fields)
    )
    ours = get_peft_model(model, LoraConfig(**fields))
    for i in range(CONFIG.n_layer):
        layer, peft_layer = ours.h[i].mlp.c_fc, theirs.base_model.model.transformer.h[i].mlp.c_fc
        A = peft_layer.lora_A["default"].weight.detach().double().numpy()
        B = peft_layer.lora_B["default"].weight.detach().double().numpy()
        residual = peft_layer.base_layer.weight.detach().double().numpy()  # Conv1D: [in, out]
        np.testing.assert_allclose(layer.base_layer.weight.value, residual, rtol=0, atol=1e-5)
        ours_BA = layer.lora_B.value @ layer.lora_A.value
        np.testing.assert_allclose(ours_BA, B @ A, rtol=0, atol=1e-5)

    # trained a little, written by PEFT, read by minift onto the ORIGINAL base
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    theirs.eval()
    idx = tokens(8)
    expected = hf_logits(torch, theirs, idx)
    theirs.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(base_model(7), tmp_path / "peft", is_trainable=True)
    np.testing.assert_allclose(loaded.forward(idx), expected, rtol=1e-4, atol=1e-4)

    # and back: minift's file, read by PEFT onto the original base, gives minift's logits
    loaded.save_pretrained(tmp_path / "minift")
    back = peft_lib.PeftModel.from_pretrained(hf32().eval(), tmp_path / "minift")
    np.testing.assert_allclose(hf_logits(torch, back, idx), expected, rtol=1e-4, atol=1e-4)
