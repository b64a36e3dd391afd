"""NF4 (minift/quant.py) and QLoRA (minift/peft/qlora.py): every claim of their docstrings."""

import numpy as np
import pytest
from helpers import hf_gpt2, import_references
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import minift
from minift.checkpoint import load_tensors, save_tensors
from minift.gradcheck import (
    check_gradients,
    cross_entropy_loss,
    fixed_dropout_masks,
    numerical_gradient_array,
    randomize_params,
    rel_error,
)
from minift.peft import (
    LoraConfig,
    LoraLinear,
    PeftModel,
    QLoraConfig,
    count_parameters,
    get_peft_model,
)
from minift.quant import (
    NF4_DELTA,
    NF4_LEVELS,
    NF4Linear,
    QuantConfig,
    dequantize_absmax_int8,
    dequantize_blockwise,
    nf4_dequantize,
    nf4_linear_backward,
    nf4_linear_forward,
    nf4_quantize,
    pack_4bit,
    quantize_absmax_int8,
    quantize_blockwise,
    quantize_model,
    unpack_4bit,
)

TINY = minift.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
TOL = 1e-7
seeds = st.integers(0, 2**31 - 1)

# The 16 NF4 values as published with QLoRA (Dettmers et al. 2023, appendix E) and shipped in
# bitsandbytes (functional.py, the NF4 code book), typed in from there.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip
HALF_GAP = np.diff(NF4_LEVELS).max() / 2  # the worst rounding, in units of a block's absmax


def tiny_gpt(seed=0, dtype=np.float64, config=TINY):
    model = minift.GPT(config, seed=seed, dtype=dtype)
    if dtype == np.float64:
        randomize_params(model.named_parameters(), seed)
    return model


def batch(seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


# -- the 16 levels --------------------------------------------------------------------------------


def test_nf4_levels_equal_the_published_table():
    # The table was computed in float32 (quantile positions from a float32 linspace starting at
    # 1 − δ rounded to 0.9677083) and stored as float32; its entries sit within 8 float32 ulps
    # (≤ 2e-7) of the float64 construction. 3e-7 is the tolerance that rounding allows, no more.
    np.testing.assert_allclose(NF4_LEVELS, PUBLISHED_NF4, rtol=0, atol=3e-7)


def test_nf4_levels_are_the_normal_quantiles_of_the_construction():
    assert NF4_DELTA == pytest.approx((1 / 32 + 1 / 30) / 2, rel=0, abs=0)
    top = norm.ppf(1 - NF4_DELTA)
    positive, negative = NF4_LEVELS[8:], NF4_LEVELS[:7]
    # 8 positive levels at 8 of 9 evenly spaced probabilities from 1 − δ down to ½ ...
    p_positive = np.linspace(1 - NF4_DELTA, 0.5, 9)[:-1][::-1]
    np.testing.assert_allclose(norm.cdf(positive * top), p_positive, rtol=1e-12)
    # ... 7 negative ones at 7 of 8, mirrored ...
    p_negative = np.linspace(1 - NF4_DELTA, 0.5, 8)[:-1]
    np.testing.assert_allclose(norm.cdf(-negative * top), p_negative, rtol=1e-12)
    # ... and an exact zero between them, the whole set ascending in [−1, 1]
    assert NF4_LEVELS[7] == 0.0 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[-1] == 1.0
    assert len(NF4_LEVELS) == 16 and np.all(np.diff(NF4_LEVELS) > 0)


# -- block-wise quantization ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(1, 300), st.sampled_from([2, 8, 64]), st.sampled_from(["f4", "f8"]))
def test_round_trip_error_is_at_most_half_the_largest_gap_times_the_block_absmax(seed, n, B, dt):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(dt)
    x[rng.random(n) < 0.1] = 0.0
    codes, absmax = quantize_blockwise(x, NF4_LEVELS, B)
    x_hat = dequantize_blockwise(codes, absmax, NF4_LEVELS, B, np.float64)
    assert codes.shape == (n,) and absmax.shape == (-(-n // B),) and codes.max() < 16
    bound = HALF_GAP * np.repeat(absmax.astype(np.float64), B)[:n]
    # the float32 absmax and a float32 x differ from float64 by a relative 2⁻²⁴ at most
    assert np.all(np.abs(x - x_hat) <= bound * (1 + 1e-6) + 1e-6 * np.abs(x))
    # each code is the nearest level: no other level is closer to x / absmax
    scale = np.repeat(np.where(absmax > 0, absmax, 1).astype(np.float64), B)[:n]
    distance = np.abs(NF4_LEVELS[None, :] - (x / scale)[:, None])
    assert np.all(distance[np.arange(n), codes] <= distance.min(axis=1) + 1e-12)


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(1, 300), st.sampled_from([2, 8, 64]))
def test_values_already_on_the_grid_come_back_exactly(seed, n, B):
    rng = np.random.default_rng(seed)
    nb = -(-n // B)
    codes = rng.integers(0, 16, n).astype(np.uint8)
    codes[::B] = rng.choice([0, 15], nb)  # each block holds ±1 · c: its absmax is c
    c = rng.uniform(0.01, 10, nb).astype(np.float32)
    c[rng.random(nb) < 0.2] = 0.0  # all-zero blocks among them
    x = NF4_LEVELS[codes] * np.repeat(c.astype(np.float64), B)[:n]
    q_codes, absmax = quantize_blockwise(x, NF4_LEVELS, B)
    np.testing.assert_array_equal(absmax, c)
    np.testing.assert_array_equal(
        dequantize_blockwise(q_codes, absmax, NF4_LEVELS, B, np.float64), x
    )
    nonzero = np.repeat(c > 0, B)[:n]
    np.testing.assert_array_equal(q_codes[nonzero], codes[nonzero])


def test_an_all_zero_block_stores_zero_and_comes_back_as_zeros():
    x = np.zeros(130)
    x[64:128] = np.linspace(-1, 2, 64)
    codes, absmax = quantize_blockwise(x, NF4_LEVELS, 64)
    assert absmax[0] == 0 and absmax[2] == 0 and absmax[1] == 2
    x_hat = dequantize_blockwise(codes, absmax, NF4_LEVELS, 64, np.float64)
    assert np.all(x_hat[:64] == 0) and np.all(x_hat[128:] == 0)
    assert np.all(codes[:64] == 7)  # the exact zero: why NF4 is asymmetric


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(0, 301))
def test_packing_two_codes_a_byte_round_trips(seed, n):
    codes = np.random.default_rng(seed).integers(0, 16, n).astype(np.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == np.uint8 and packed.shape == ((n + 1) // 2,)
    np.testing.assert_array_equal(unpack_4bit(packed, n), codes)
    if n >= 2:
        assert packed[0] == codes[0] * 16 + codes[1]  # the first code in the high nibble


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 1000))
def test_double_quantized_constants_are_within_half_a_step_of_the_originals(seed, nb):
    rng = np.random.default_rng(seed)
    c = np.abs(rng.standard_normal(nb)).astype(np.float32) * 0.1
    c2, s, mean = quantize_absmax_int8(c)
    assert c2.dtype == np.int8 and s.shape == (-(-nb // 256),) and mean.shape == (1,)
    np.testing.assert_allclose(mean[0], c.mean(dtype=np.float32), rtol=0, atol=0)
    c_hat = dequantize_absmax_int8(c2, s, mean)
    step = np.repeat(s.astype(np.float64), 256)[:nb] / 127  # one int8 step of the block
    err = np.abs(c_hat.astype(np.float64) - c)
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-7 * c)
    assert np.all(c_hat >= 0)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 20), st.integers(1, 70), st.booleans())
def test_a_weight_round_trips_through_nf4_within_the_bound(seed, d_in, d_out, double_quant):
    W = np.random.default_rng(seed).standard_normal((d_in, d_out))
    q = nf4_quantize(W, 64, double_quant)
    W_hat = nf4_dequantize(q, np.float64)
    assert W_hat.shape == W.shape and q.codes.shape == ((W.size + 1) // 2,)
    blocks = np.pad(np.abs(W).ravel(), (0, -W.size % 64)).reshape(-1, 64).max(axis=1)
    # double quantization moves each constant by half an int8 step of its 256-block at most
    slack = 0 if not double_quant else np.abs(blocks - blocks.mean()).max() / 127
    bound = np.repeat(HALF_GAP * blocks + slack, 64)[: W.size].reshape(W.shape)
    assert np.all(np.abs(W - W_hat) <= bound * (1 + 1e-6))


def test_bits_per_weight_are_4_5_and_4_127_with_double_quant():
    W = np.random.default_rng(0).standard_normal((256, 1024))  # 4096 blocks: 16 of 256
    bits = 8 * nf4_quantize(W).nbytes() / W.size
    bits_dq = 8 * nf4_quantize(W, double_quant=True).nbytes() / W.size
    assert bits == 4 + 32 / 64
    assert bits_dq == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / W.size, rel=0, abs=1e-12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: quantize_blockwise(np.ones(8, np.int64), NF4_LEVELS, 4), TypeError,
         "x: expected a float32 or float64 array, got dtype int64"),
        (lambda: quantize_blockwise(np.array([1.0, np.nan]), NF4_LEVELS, 2), ValueError,
         "x: expected finite values, got 1 non-finite"),
        (lambda: nf4_quantize(np.ones((4, 4)), blocksize=7), ValueError,
         "blocksize: expected an even integer ≥ 2"),
        (lambda: nf4_quantize(np.ones((4, 4)), blocksize=2.0), TypeError,
         "blocksize: expected an integer, got 2.0"),
        (lambda: dequantize_blockwise(np.zeros(10, np.uint8), np.ones(2), NF4_LEVELS, 4),
         ValueError,
         "absmax: expected shape (3,) for 10 codes in blocks of 4, got (2,)"),
        (lambda: dequantize_blockwise(np.zeros(4, np.int8), np.ones(1), NF4_LEVELS, 4), TypeError,
         "codes: expected dtype uint8, got int8"),
        (lambda: pack_4bit(np.array([3, 16], np.uint8)), ValueError,
         "codes: expected 4-bit codes (0..15), got 16"),
        (lambda: unpack_4bit(np.zeros(3, np.uint8), 8), ValueError,
         "packed: expected uint8 [4] for 8 codes, got uint8 [3]"),
        (lambda: NF4Linear(nf4_quantize(np.ones(6)), None, np.float32), ValueError,
         "q: expected a 2-D weight [in, out], got shape (6,)"),
        (lambda: QuantConfig(quant_type="fp4"), ValueError,
         "quant_type: expected 'nf4', got 'fp4'"),
        (lambda: QuantConfig(blocksize=63), ValueError, "blocksize: expected an even integer"),
        (lambda: QuantConfig(double_quant=1), TypeError,
         "double_quant: expected True or False, got 1"),
        (lambda: QLoraConfig(init_lora_weights="pissa"), ValueError,
         "init_lora_weights: 'pissa' moves part of W₀"),
        (lambda: QLoraConfig(use_dora=True), ValueError, "use_dora: DoRA on a quantized base"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_argument(call, error, message):
    with pytest.raises(error) as e:
        call()
    assert message in str(e.value)


# -- the NF4 Linear -------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 9), st.integers(1, 70), st.booleans())
def test_nf4_linear_dx_and_db_match_finite_differences(seed, d_in, d_out, double_quant):
    rng = np.random.default_rng(seed)
    q = nf4_quantize(rng.standard_normal((d_in, d_out)), 64, double_quant)
    x, b = rng.standard_normal((2, 3, d_in)), rng.standard_normal(d_out)
    y, cache = nf4_linear_forward(x, q, b)  # x float64: Ŵ₀ dequantized to float64
    assert y.dtype == np.float64
    dy = rng.standard_normal(y.shape)
    dx, db = nf4_linear_backward(dy, cache, need_db=True)

    def fwd():
        return nf4_linear_forward(x, q, b)[0]

    assert rel_error(dx, numerical_gradient_array(fwd, x, dy)) < TOL
    assert rel_error(db, numerical_gradient_array(fwd, b, dy)) < TOL
    W_hat = nf4_dequantize(q, np.float64)  # dx goes through Ŵ₀, the weight the forward used
    np.testing.assert_array_equal(dx, (dy.reshape(-1, d_out) @ W_hat.T).reshape(x.shape))


def test_nf4_linear_computes_the_dequantized_linear_and_gives_its_codes_no_gradient():
    rng = np.random.default_rng(0)
    layer = minift.nn.Linear(70, 5, rng=rng, dtype=np.float64)
    W = layer.weight.value.copy()
    nf4 = NF4Linear.from_linear(layer, 64, double_quant=False)
    assert nf4.bias is layer.bias and not nf4.weight.trainable
    assert "weight" not in nf4.named_parameters() and set(nf4.named_buffers()) == {
        "weight_codes", "weight_absmax"}  # fmt: skip
    x = rng.standard_normal((3, 70))
    np.testing.assert_array_equal(nf4.forward(x), x @ nf4.dequantize() + layer.bias.value)
    assert 0 < np.abs(nf4.dequantize() - W).max() <= HALF_GAP * np.abs(W).max()
    codes = nf4.weight_codes.copy()
    nf4.backward(np.ones((3, 5)))
    np.testing.assert_array_equal(nf4.weight_codes, codes)
    assert layer.bias.grad is not None  # the float bias still trains
    with pytest.raises(TypeError, match="weight: an NF4Linear's weight is quantized and frozen"):
        nf4.weight = layer.weight


# -- QLoRA: the model -----------------------------------------------------------------------------


def test_quantize_model_replaces_the_blocks_linears_and_nothing_else():
    model = tiny_gpt()
    names = quantize_model(model)
    assert names == [f"h.{i}.{n}" for i in range(2)
                     for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]  # fmt: skip
    quantized = {n for n, m in model.named_modules() if isinstance(m, NF4Linear)}
    assert quantized == set(names)
    assert "wte.weight" in model.named_parameters()  # the embedding and the tied head stay float
    with pytest.raises(TypeError, match="model: h.0.attn.c_attn is quantized already"):
        quantize_model(model)
    with pytest.raises(TypeError, match="config: expected a QuantConfig, got dict"):
        quantize_model(tiny_gpt(), {"blocksize": 64})


@pytest.mark.parametrize("double_quant", [False, True])
def test_qlora_config_equals_quantize_model_then_lora(double_quant):
    idx, _ = batch(0)
    one = get_peft_model(tiny_gpt(), QLoraConfig(r=2, double_quant=double_quant), seed=3)
    base = tiny_gpt()
    quantize_model(base, QuantConfig(double_quant=double_quant))
    two = get_peft_model(base, LoraConfig(r=2), seed=3)
    randomize_params({n: p for n, p in one.named_parameters().items() if p.trainable}, 1)
    randomize_params({n: p for n, p in two.named_parameters().items() if p.trainable}, 1)
    assert isinstance(one.h[0].attn.c_attn, LoraLinear)
    assert isinstance(one.h[0].attn.c_attn.base_layer, NF4Linear)
    np.testing.assert_array_equal(one.forward(idx), two.forward(idx))


def test_qlora_trains_loras_count_and_counts_the_quantized_weights_as_frozen():
    model = tiny_gpt()
    total = count_parameters(model).total
    peft = get_peft_model(model, QLoraConfig(r=2, target_modules=["c_attn", "c_fc"]))
    count = count_parameters(peft)
    C, L = TINY.d_model, TINY.n_layer
    assert count.trainable == L * 2 * ((C + 3 * C) + (C + 4 * C))
    assert count.total == total + count.trainable
    assert count.by_module["h.0.mlp.c_proj"]["frozen"] == 4 * C * C + C


@settings(max_examples=4, deadline=None)
@given(seeds, st.booleans(), st.floats(0.1, 0.5))
def test_every_qlora_parameter_matches_finite_differences_with_dropout_on(seed, dq, p):
    """Every trainable parameter of a QLoRA GPT, float64 (Ŵ₀ dequantized to float64), with
    LoRA's dropout and the GPT's own active: dx flows through each quantized layer below."""
    config = QLoraConfig(r=2, lora_alpha=3, lora_dropout=p, double_quant=dq,
                         target_modules=["c_attn", "c_fc"])  # fmt: skip
    peft = get_peft_model(tiny_gpt(seed, config=TINY.__class__(**{**TINY.to_dict(), "dropout": p})),
                          config, seed=seed)  # fmt: skip
    # ΔW a tenth of W₀, as after fine-tuning (test_lora.py says why not larger)
    randomize_params({n: q for n, q in peft.named_parameters().items() if "lora_" in n},
                     seed + 1, scale=0.1)  # fmt: skip
    loss = fixed_dropout_masks(cross_entropy_loss(peft, *batch(seed)), peft)
    report = check_gradients(loss, peft.named_parameters())
    assert len(report.errors) == 2 * 2 * TINY.n_layer  # A and B of 2 targets per block
    assert report.ok(TOL), str(report)
    assert not any(
        "base_layer" in n for n, q in peft.named_parameters().items() if q.grad is not None
    )


@pytest.mark.parametrize("double_quant", [False, True])
def test_merge_dequantizes_exactly_and_unmerge_restores_the_codes_bit_for_bit(double_quant):
    idx, _ = batch(1)
    peft = get_peft_model(tiny_gpt(1), QLoraConfig(r=2, double_quant=double_quant), seed=1)
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 2)
    before = peft.forward(idx)
    layer = peft.h[0].attn.c_attn
    nf4, codes = layer.base_layer, layer.base_layer.weight_codes.copy()
    Wq = nf4.dequantize()
    layer.merge()
    merged = layer.base_layer
    assert type(merged) is minift.nn.Linear  # a float Linear now: Ŵ₀ + ΔW, not re-quantized
    np.testing.assert_array_equal(merged.weight.value, Wq + layer.delta_weight())
    layer.unmerge()
    assert layer.base_layer is nf4
    np.testing.assert_array_equal(nf4.weight_codes, codes)
    np.testing.assert_array_equal(peft.forward(idx), before)
    merged_model = peft.merge_and_unload()
    # the adapted layers are float now; the others stay in 4 bits, as PEFT leaves them
    still_nf4 = {n for n, m in merged_model.named_modules() if isinstance(m, NF4Linear)}
    assert still_nf4 == {f"h.{i}.{n}" for i in range(2)
                         for n in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")}  # fmt: skip
    np.testing.assert_allclose(merged_model.forward(idx), before, rtol=0, atol=1e-12)


# -- QLoRA on disk --------------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [False, True])
def test_a_quantized_base_round_trips_through_safetensors_exactly(tmp_path, double_quant):
    model = tiny_gpt(2)
    quantize_model(model, QuantConfig(double_quant=double_quant))
    save_tensors(tmp_path / "model.safetensors", model.state_dict())
    tensors, _ = load_tensors(tmp_path / "model.safetensors")
    assert tensors["h.0.attn.c_attn.weight_codes"].dtype == np.uint8
    other = tiny_gpt(3)  # other weights, other codes: every one must be overwritten
    quantize_model(other, QuantConfig(double_quant=double_quant))
    other.load_state_dict(tensors)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    idx, _ = batch(2)
    np.testing.assert_array_equal(other.forward(idx), model.forward(idx))


def test_loading_a_quantized_base_is_strict_about_keys_shapes_and_dtypes():
    model = tiny_gpt()
    quantize_model(model)
    state = model.state_dict()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    bad_dtype = {**state, "h.0.attn.c_attn.weight_codes": state["h.0.attn.c_attn.weight_codes"]
                 .astype(np.int16)}  # fmt: skip
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn.weight_codes: expected shape \(96,\) "
                       r"and dtype uint8, got \(96,\) and int16"):  # fmt: skip
        model.load_state_dict(bad_dtype)
    with pytest.raises(ValueError, match=r"missing keys \['h.1.mlp.c_proj.weight_absmax'\]"):
        model.load_state_dict(
            {k: v for k, v in state.items() if k != "h.1.mlp.c_proj.weight_absmax"}
        )
    double = tiny_gpt()
    quantize_model(double, QuantConfig(double_quant=True))  # other buffers: refused, not mixed
    with pytest.raises(ValueError, match="unexpected keys"):
        double.load_state_dict(state)
    float_model = tiny_gpt()
    with pytest.raises(ValueError, match=r"missing keys \['h.0.attn.c_attn.weight'"):
        float_model.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k]), k  # nothing changed by the refused loads


# -- against Hugging Face PEFT (no bitsandbytes: the reference base holds Ŵ₀ in float64) ---------


def quantized_and_float_twin(seed, tmp_path):
    """A QLoRA-ready GPT (its blocks in NF4) and GPT2LMHeadModel holding the same Ŵ₀ in float64.

    QLoRA is LoRA on the dequantized base: PEFT's LoRA on a float model whose weights ARE Ŵ₀
    must compute what minift computes on the codes."""
    quantized = tiny_gpt(seed)
    quantize_model(quantized, QuantConfig(double_quant=True))
    twin = tiny_gpt(seed)
    for name, module in quantized.named_modules():
        if isinstance(module, NF4Linear):
            twin.get_submodule(name).weight.value[...] = module.dequantize()
    return quantized, hf_gpt2(twin, tmp_path / "base")


@pytest.mark.reference
def test_a_qlora_adapter_minift_writes_loads_in_peft_on_the_dequantized_base(tmp_path):
    torch, _, peft_lib = import_references()
    quantized, hf = quantized_and_float_twin(5, tmp_path)
    peft = get_peft_model(
        quantized, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"])
    )
    randomize_params({n: p for n, p in peft.named_parameters().items() if p.trainable}, 6)
    idx, _ = batch(5)
    ours = peft.forward(idx)
    peft.save_pretrained(tmp_path / "adapter")
    hf = peft_lib.PeftModel.from_pretrained(hf, tmp_path / "adapter")
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.reference
def test_a_peft_lora_adapter_on_the_dequantized_base_gives_qloras_logits_and_gradients(tmp_path):
    torch, _, peft_lib = import_references()
    quantized, hf = quantized_and_float_twin(9, tmp_path)
    config = peft_lib.LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "mlp.c_proj"],
                                 fan_in_fan_out=True)  # fmt: skip
    hf = peft_lib.get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(tmp_path / "adapter")
    idx, targets = batch(9)
    logits = hf(input_ids=torch.tensor(idx)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), torch.tensor(targets).ravel())
    loss.backward()
    peft = PeftModel.from_pretrained(quantized, tmp_path / "adapter", is_trainable=True)
    ours = peft.forward(idx)
    np.testing.assert_allclose(ours, logits.detach().numpy(), rtol=1e-10, atol=1e-10)
    cross_entropy_loss(peft, idx, targets)(True)
    theirs = {
        name.removeprefix("base_model.model.transformer.").replace(".default.weight", ""): p.grad
        for name, p in hf.named_parameters()
        if p.requires_grad
    }
    ours = {n: p.grad for n, p in peft.named_parameters().items() if p.trainable}
    assert ours.keys() == theirs.keys() and len(ours) == 8
    for name, grad in ours.items():
        np.testing.assert_allclose(grad, theirs[name].numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
