"""The checks of the config fields that say where a method goes and what its files say."""

import functools

import pytest

from minift.peft import AdaLoraConfig, IA3Config, LoraConfig, VeraConfig

CONFIGS = {
    "LoRA": LoraConfig,
    "VeRA": VeraConfig,
    "AdaLoRA": functools.partial(AdaLoraConfig, total_step=100),
    "IA3": IA3Config,
}


@pytest.mark.parametrize("method", CONFIGS)
def test_a_config_takes_only_a_bool_or_none_as_the_files_layout(method):
    make = CONFIGS[method]
    for layout in (None, True, False):
        assert make(fan_in_fan_out=layout).fan_in_fan_out is layout
    for bad in (1, 0, 1.0, "yes"):  # 1 and 0 compare equal to True and False: still refused
        with pytest.raises(TypeError) as e:
            make(fan_in_fan_out=bad)
        assert str(e.value) == f"fan_in_fan_out: expected True, False or None, got {bad!r}"


@pytest.mark.parametrize("method", ["LoRA", "VeRA", "AdaLoRA"])
def test_a_config_refuses_a_bias_its_method_would_not_train(method):
    make = CONFIGS[method]
    assert make(bias="none").bias == "none"
    for bias in ("all", "lora_only"):
        with pytest.raises(ValueError) as e:
            make(bias=bias)
        want = f"bias: minift's {method} trains no biases (use BitFit), got {bias!r}"
        assert str(e.value) == want
