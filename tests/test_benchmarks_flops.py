"""benchmarks.train_step.train_step_flops, checked two independent ways (no timing here).

1. From the parameters: every weight matrix W [in, out] costs 2·in·out FLOPs per token forward and
   twice that backward, so 6·(matrix parameters)·tokens, with the tied wte counted once as the LM
   head and wpe left out (a lookup, no matmul); plus the attention matmuls q·kᵀ and a·v, counted
   per head from their shapes.
2. By running one step: the model's Params are wrapped in an ndarray subclass that adds up
   2·(output size)·k for every ``@`` it takes part in, through the forward, the loss and the
   backward.
"""

import numpy as np
import pytest

from benchmarks.train_step import train_step_flops
from minift.functional import cross_entropy
from minift.model import GPT, GPTConfig
from minift.peft import LoraConfig, get_peft_model

# Every dimension distinct, so a formula that swaps two of them cannot pass by accident.
CONFIGS = [
    (GPTConfig(vocab_size=11, block_size=7, n_layer=2, n_head=2, d_model=12), 3, 7),
    (GPTConfig(vocab_size=13, block_size=10, n_layer=3, n_head=4, d_model=16), 2, 9),
    (GPTConfig(vocab_size=96, block_size=64, n_layer=1, n_head=1, d_model=8), 5, 64),
]


def flops_from_parameters(cfg, B, T):
    model = GPT(cfg, seed=0, dtype=np.float64)
    params = model.named_parameters()
    matrices = {k: p for k, p in params.items() if p.value.ndim == 2 and k != "wpe.weight"}
    assert "wte.weight" in matrices  # the tied LM head, once
    n_matrix = sum(p.size for p in matrices.values())
    weights = 6 * n_matrix * B * T  # 2 forward + 4 backward (dx and dW) per weight per token

    hs = cfg.d_model // cfg.n_head
    per_head_forward = 2 * T * hs * T + 2 * T * T * hs  # q·kᵀ [T,hs]×[hs,T], a·v [T,T]×[T,hs]
    attention = 3 * cfg.n_layer * B * cfg.n_head * per_head_forward  # backward = 2× forward
    return weights + attention


class _MatmulCounter(np.ndarray):
    """An ndarray that adds 2·(output size)·k to ``flops`` for every matmul it is an operand of.

    Results of ufuncs on it are _MatmulCounter again, so the count follows activations and
    gradients through the whole step.
    """

    flops = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [x.view(np.ndarray) if isinstance(x, _MatmulCounter) else x for x in inputs]
        out = kwargs.get("out")
        if out is not None:  # in place (a += b): write through plain views, hand back the originals
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, _MatmulCounter) else o for o in out
            )
        result = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.matmul and method == "__call__":
            assert plain[0].ndim >= 2 and plain[1].ndim >= 2, "matrix-vector product not counted"
            _MatmulCounter.flops += 2 * result.size * plain[0].shape[-1]
        if out is not None:
            return out[0] if len(out) == 1 else out
        return result.view(_MatmulCounter) if isinstance(result, np.ndarray) else result


def flops_by_running(cfg, B, T, lora_r=0):
    model = GPT(cfg, seed=0, dtype=np.float64)
    if lora_r:  # the benchmark's LoRA: c_attn and attn.c_proj, everything else frozen
        model = get_peft_model(
            model, LoraConfig(r=lora_r, target_modules=["c_attn", "attn.c_proj"])
        )
    for p in model.parameters():
        p.value = p.value.view(_MatmulCounter)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(B, T + 1))
    _MatmulCounter.flops = 0
    logits = model.forward(tokens[:, :-1])
    _, dlogits = cross_entropy(logits, tokens[:, 1:])
    model.zero_grad()
    model.backward(dlogits)
    return _MatmulCounter.flops


@pytest.mark.parametrize("cfg, B, T", CONFIGS)
def test_flops_match_the_parameter_count(cfg, B, T):
    expected = flops_from_parameters(cfg, B, T)
    got = train_step_flops(cfg, B, T)
    assert got == expected, f"{cfg}, B={B}, T={T}: expected {expected:,}, got {got:,}"


@pytest.mark.parametrize("cfg, B, T", CONFIGS)
def test_flops_match_the_matmuls_a_step_runs(cfg, B, T):
    counted = flops_by_running(cfg, B, T)
    got = train_step_flops(cfg, B, T)
    assert got == counted, f"{cfg}, B={B}, T={T}: counted {counted:,} in a step, formula {got:,}"


@pytest.mark.parametrize("cfg, B, T", CONFIGS)
@pytest.mark.parametrize("r", [1, 2])
def test_lora_flops_match_the_matmuls_a_step_runs(cfg, B, T, r):
    counted = flops_by_running(cfg, B, T, lora_r=r)
    got = train_step_flops(cfg, B, T, lora_r=r)
    assert got == counted, f"{cfg}, B={B}, T={T}, r={r}: counted {counted:,}, formula {got:,}"
