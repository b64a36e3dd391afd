r"""AdaLoRA in training (Zhang et al., 2023): the regulariser and the moving rank budget.

The second half of adalora.py's chapter (read that first); it finds a layer by its ``lora_E``.

The orthogonality regulariser
-----------------------------
The paper adds R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F to the loss. PEFT computes something
slightly different, and minift follows PEFT (so a training run means the same thing):

    R = w · (1/K) · Σ_matrices ‖M·Mᵀ − I‖_F       M = Q [r, in], and M = Pᵀ [r, out]

the Frobenius norm itself, NOT squared, averaged over the K = 2·(number of targets) matrices,
times w = ``orth_reg_weight``. For one M with C = M·Mᵀ − I (symmetric):

    d‖C‖²_F = 2·tr(C·dC),  dC = dM·Mᵀ + M·dMᵀ    so   ∂‖C‖²_F/∂M = 4·C·M
    ∂‖C‖_F/∂M = 4·C·M / (2·‖C‖_F) = 2·C·M / ‖C‖_F     (0 at C = 0, where the norm has a kink)

Near its minimum the norm has a kink (as |x| at 0): its gradient keeps a size up to 2·‖M‖₂
however small C is, where the squared form's 4·C·M fades with C. So PEFT's R keeps pulling P
and Q towards orthonormality at full strength, and never settles exactly on it.

``orth_deviation_forward/backward`` compute both forms; ``adalora_regularizer(peft_model)``
returns R and ADDS its gradient into the P and Q grads, so the ONE training loop adds the
returned number to its loss and nothing else.

Importance and the budget: how ranks move
-----------------------------------------
The sensitivity of a parameter entry w is |w · ∂L/∂w| (the first-order change of the loss if w
were set to zero). It is noisy from batch to batch, so AdaLoRA smooths it and measures how
uncertain it is, with two exponential moving averages (β1 = ``beta1``, β2 = ``beta2``):

    I = |w ⊙ ∂L/∂w|,   Ī ← β1·Ī + (1 − β1)·I,   Ū ← β2·Ū + (1 − β2)·|I − Ī|,   s(w) = Ī·Ū

The importance of the i-th triplet (λᵢ, P[:, i], Q[i, :]) of a matrix is

    Sᵢ = s(λᵢ) + mean_j s(P[j, i]) + mean_j s(Q[i, j])

The total budget b(t) (ranks kept, summed over ALL targets) follows PEFT's cubic schedule,
with b⁰ = init_r·n_targets, b_T = target_r·n_targets, T = total_step:

    b(t) = b⁰                                                     t ≤ tinit        (warm-up)
    b(t) = b_T + (b⁰ − b_T)·(1 − (t − tinit)/(T − tfinal − tinit))³   (rounded down)  in between
    b(t) = b_T                                                    t ≥ T − tfinal   (final phase)

Every ``deltaT`` steps of the middle phase, the triplets of all targets are ranked together and
all but the b(t) most important get λᵢ = 0: a matrix that matters keeps more ranks than one
that does not. How masked values STAY masked (as PEFT does it, not a mask in the forward):
- between two allocations a masked λᵢ is an ordinary parameter again and may regrow (the
  paper's pruned triplets can be reactivated); the next allocation judges it afresh;
- at t = T − tfinal the final allocation is stored in the config as ``rank_pattern`` (PEFT's
  field: for each target, which of its init_r triplets are kept), and at every later step the
  masked λᵢ are set back to 0 after the optimizer's step. A masked triplet's P and Q rows still
  change (the regulariser), but they multiply λᵢ = 0.
PEFT masks every triplet scoring ≤ the k-th smallest score (ties can mask more than k); minift
masks exactly the k smallest (ties broken by position), so the kept count IS the budget.

The training loop, in PEFT's order:

    loss = task_loss + adalora_regularizer(peft_model)   # after backward: adds its grads
    optimizer.step()
    allocator.update_and_allocate(peft_model, step)       # reads the grads: before zeroing
    peft_model.zero_grad()

Shape legend: r = init_r, n a matrix's other side (d_in for Q, d_out for Pᵀ).
"""

from __future__ import annotations

import numpy as np

from minift.nn import Module
from minift.param import Param

# ------------------------------------------------------------------------------------------------
# The math, as pure functions


def orth_deviation_forward(M, squared=False):
    """‖M·Mᵀ − I‖_F (PEFT's), or its square (the paper's).  # [r, n] -> scalar, cache"""
    C = M @ M.T - np.eye(M.shape[0], dtype=M.dtype)  # (r, r), symmetric
    norm = float(np.linalg.norm(C))
    return (norm * norm if squared else norm), (M, C, norm, squared)


def orth_deviation_backward(dout, cache):
    """dM = dout · 4·C·M (squared), or dout · 2·C·M/‖C‖_F (0 where C = 0).  # -> [r, n]"""
    M, C, norm, squared = cache
    if squared:
        return dout * 4.0 * (C @ M)
    if norm == 0.0:
        return np.zeros_like(M)
    return dout * 2.0 * (C @ M) / norm


def budget_schedule(step, init_bgt, target_bgt, tinit, tfinal, total_step, deltaT):
    """PEFT's cubic schedule: (budget b(step), whether to mask at this step).

    b⁰ up to tinit, then b_T + (b⁰ − b_T)·(1 − progress)³ rounded down, b_T from T − tfinal on.
    Masking happens every ``deltaT`` steps in the middle phase, and at every step after it.
    """
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    remaining = 1.0 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_bgt - target_bgt) * remaining**3 + target_bgt)
    return budget, step % deltaT == 0


# ------------------------------------------------------------------------------------------------
# The regulariser the training loop adds to its loss


def svd_layers(peft_model: Module) -> dict[str, Module]:
    """name -> SVDLinear for every AdaLoRA layer (those holding a λ), in the model's order."""
    return {n: m for n, m in peft_model.named_modules() if isinstance(vars(m).get("lora_E"), Param)}


def _adalora_config(peft_model, where):
    config = getattr(peft_model, "peft_config", None)
    if getattr(config, "peft_type", None) != "ADALORA":
        raise TypeError(
            f"{where}: expected a PeftModel made with an AdaLoraConfig, got "
            f"{type(peft_model).__name__} with {type(config).__name__}"
        )
    return config


def adalora_regularizer(peft_model, accumulate_grads: bool = True) -> float:
    """R = w·(1/K)·Σ ‖M·Mᵀ − I‖_F over every Q and Pᵀ (PEFT's form); ADDS ∂R/∂P, ∂R/∂Q to grads.

    Call it once per step after zeroing the grads (before or after the model's backward: grads
    accumulate) and add the returned value to the reported loss. w = ``orth_reg_weight``; with
    w = 0 it returns 0.0 and touches nothing. ``accumulate_grads=False`` only evaluates R.
    """
    config = _adalora_config(peft_model, "adalora_regularizer")
    layers = svd_layers(peft_model)
    weight = config.orth_reg_weight
    if weight == 0 or not layers:
        return 0.0
    scale = weight / (2 * len(layers))  # w/K: K = 2 matrices per layer
    total = 0.0
    for layer in layers.values():
        value_Q, cache_Q = orth_deviation_forward(layer.lora_A.value)  # Q·Qᵀ
        value_P, cache_P = orth_deviation_forward(layer.lora_B.value.T)  # Pᵀ·P
        total += value_Q + value_P
        if accumulate_grads:
            layer.lora_A.accumulate_grad(orth_deviation_backward(scale, cache_Q))
            layer.lora_B.accumulate_grad(orth_deviation_backward(scale, cache_P).T)
    return scale * total


# ------------------------------------------------------------------------------------------------
# The rank allocator


class RankAllocator:
    """Importance scores and the shrinking rank budget: ``update_and_allocate`` after each step.

    Holds, per trainable AdaLoRA Param (by its name in the model), the smoothed sensitivity Ī
    (``exp_avg_ipt``) and uncertainty Ū (``exp_avg_unc``); writes the final allocation into the
    config's ``rank_pattern``. ``init_bgt`` = init_r·n_targets, ``target_bgt`` = target_r·n_targets.
    """

    def __init__(self, peft_model):
        self.config = _adalora_config(peft_model, "RankAllocator")
        layers = svd_layers(peft_model)
        self.init_bgt = sum(layer.r for layer in layers.values())
        self.target_bgt = self.config.target_r * len(layers)
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.exp_avg_ipt: dict[str, np.ndarray] = {}
        self.exp_avg_unc: dict[str, np.ndarray] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        c = self.config
        return budget_schedule(
            step, self.init_bgt, self.target_bgt, c.tinit, c.tfinal, c.total_step, c.deltaT
        )

    def update_ipt(self, peft_model) -> None:
        """Ī ← β1·Ī + (1 − β1)·|w ⊙ g|,  Ū ← β2·Ū + (1 − β2)·| |w ⊙ g| − Ī |, per entry."""
        b1, b2 = self.config.beta1, self.config.beta2
        for name, layer in svd_layers(peft_model).items():
            for attr in ("lora_A", "lora_E", "lora_B"):
                p = getattr(layer, attr)
                if p.grad is None:
                    raise RuntimeError(
                        f"update_and_allocate: {name}.{attr} has no gradient; call it after "
                        "the backward pass and before zero_grad()"
                    )
                key = f"{name}.{attr}"
                ipt = np.abs(p.value * p.grad)
                avg = b1 * self.exp_avg_ipt.get(key, 0.0) + (1 - b1) * ipt
                self.exp_avg_ipt[key] = avg
                self.exp_avg_unc[key] = b2 * self.exp_avg_unc.get(key, 0.0) + (1 - b2) * np.abs(
                    ipt - avg
                )

    def _score(self, key, like):
        if key not in self.exp_avg_ipt:  # no statistics yet: every entry scores 0
            return np.zeros_like(like)
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def triplet_scores(self, peft_model) -> dict[str, np.ndarray]:
        """name -> S [r]: Sᵢ = s(λᵢ) + mean_j s(P[j, i]) + mean_j s(Q[i, j])."""
        scores = {}
        for name, layer in svd_layers(peft_model).items():
            s_E = self._score(f"{name}.lora_E", layer.lora_E.value)  # (r,)
            s_A = self._score(f"{name}.lora_A", layer.lora_A.value)  # (r, in)
            s_B = self._score(f"{name}.lora_B", layer.lora_B.value)  # (out, r)
            scores[name] = s_E + s_A.mean(axis=1) + s_B.mean(axis=0)
        return scores

    def mask_to_budget(self, peft_model, budget: int) -> dict[str, list[bool]]:
        """Zero the λᵢ of all but the ``budget`` best triplets (over all targets); the pattern."""
        layers = svd_layers(peft_model)
        scores = self.triplet_scores(peft_model)
        flat = np.concatenate([scores[name] for name in layers]) if layers else np.zeros(0)
        keep = np.ones(flat.size, dtype=bool)
        n_masked = min(max(self.init_bgt - budget, 0), flat.size)
        keep[np.argsort(flat, kind="stable")[:n_masked]] = False  # the n_masked lowest
        pattern, start = {}, 0
        for name, layer in layers.items():
            kept = keep[start : start + layer.r]
            start += layer.r
            layer.lora_E.value[~kept] = 0.0
            pattern[rank_pattern_key(name)] = kept.tolist()
        return pattern

    def mask_using_rank_pattern(self, peft_model, rank_pattern) -> None:
        """Set λᵢ = 0 wherever ``rank_pattern`` says the triplet was pruned."""
        for name, layer in svd_layers(peft_model).items():
            kept = np.asarray(rank_pattern[rank_pattern_key(name)], dtype=bool)
            layer.lora_E.value[~kept] = 0.0

    def update_and_allocate(self, peft_model, global_step: int):
        """One step of AdaLoRA's schedule (PEFT's AdaLoraModel.update_and_allocate).

        Before T − tfinal: update the scores, and mask to b(t) when the schedule says so.
        At T − tfinal: the final allocation to b_T, saved as ``config.rank_pattern``.
        After it: re-apply ``rank_pattern`` (the optimizer may have moved masked λᵢ).
        Returns (budget, the rank pattern written at this step or None).
        """
        if isinstance(global_step, bool) or not isinstance(global_step, (int, np.integer)):
            raise TypeError(f"global_step: expected an integer step, got {global_step!r}")
        c = self.config
        final = c.total_step - c.tfinal
        if global_step < final:
            self.update_ipt(peft_model)
            budget, mask_now = self.budget_schedule(global_step)
            if not mask_now:
                return budget, None
            c.rank_pattern = self.mask_to_budget(peft_model, budget)
            return budget, c.rank_pattern
        if global_step == final or c.rank_pattern is None:
            c.rank_pattern = self.mask_to_budget(peft_model, self.target_bgt)
            self.reset_ipt()
            return self.target_bgt, c.rank_pattern
        self.mask_using_rank_pattern(peft_model, c.rank_pattern)
        return self.target_bgt, None


def rank_pattern_key(name: str) -> str:
    """PEFT's key in ``rank_pattern``: the λ's name in Hugging Face's GPT-2 model."""
    return f"transformer.{name}.lora_E"


class AdaLoraTrainHook:
    """AdaLoRA in minift's one training loop, in PEFT's order (a minift.train.TrainHook).

    after_backward   the orthogonality regulariser adds its gradient to P and Q (and its value
                     to the logged loss)
    after_step       the optimizer has stepped, the gradients are still there: update the
                     importance scores and mask λ down to this step's budget
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.allocator = RankAllocator(peft_model)

    def after_backward(self, step, model) -> float:
        return adalora_regularizer(model)

    def after_step(self, step, model) -> None:
        self.allocator.update_and_allocate(model, step)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """The smoothed scores Ī and Ū, and the rank pattern so far: without them a resumed run
        would rank the triplets on fresh averages (or, after the final allocation, on none)."""
        a = self.allocator
        arrays = {f"exp_avg_ipt/{k}": v.copy() for k, v in a.exp_avg_ipt.items()}
        arrays |= {f"exp_avg_unc/{k}": v.copy() for k, v in a.exp_avg_unc.items()}
        pattern = a.config.rank_pattern
        return arrays, {"rank_pattern": None if pattern is None else dict(pattern)}

    def load_state_dict(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        a = self.allocator
        layers = svd_layers(self.peft_model)
        shapes = {
            f"{name}.{attr}": getattr(layer, attr).value.shape
            for name, layer in layers.items()
            for attr in ("lora_A", "lora_E", "lora_B")
        }
        ipt, unc = (
            {k.removeprefix(kind): v for k, v in tensors.items() if k.startswith(kind)}
            for kind in ("exp_avg_ipt/", "exp_avg_unc/")
        )
        if (
            len(ipt) + len(unc) != len(tensors)
            or ipt.keys() != unc.keys()
            or not ipt.keys() <= shapes.keys()
        ):
            raise ValueError(
                "AdaLoRA's state: expected exp_avg_ipt/<param> and exp_avg_unc/<param> for the "
                f"same AdaLoRA parameters of this model, got {sorted(tensors)[:4]}"
            )
        for key in ipt:
            dtype = layers[key.rpartition(".")[0]].lora_E.value.dtype
            for kind, value in (("exp_avg_ipt", ipt[key]), ("exp_avg_unc", unc[key])):
                if value.shape != shapes[key] or value.dtype != dtype:
                    raise ValueError(
                        f"AdaLoRA's state: {kind}/{key}: expected {dtype} "
                        f"{shapes[key]}, got {value.dtype} {value.shape}"
                    )
        if set(meta) != {"rank_pattern"}:
            raise ValueError(
                f'AdaLoRA\'s state: expected the field "rank_pattern", got {sorted(meta)}'
            )
        pattern = meta["rank_pattern"]
        if pattern is not None:
            expected = {rank_pattern_key(n): layer.r for n, layer in layers.items()}
            if not (
                isinstance(pattern, dict)
                and pattern.keys() == expected.keys()
                and all(
                    isinstance(v, list)
                    and len(v) == expected[k]
                    and all(isinstance(b, bool) for b in v)
                    for k, v in pattern.items()
                )
            ):
                raise ValueError(
                    'AdaLoRA\'s state: "rank_pattern": expected null or {λ name: a list of r '
                    f"booleans}} for {sorted(expected)[:2]}…, got {str(pattern)[:80]}"
                )
        a.exp_avg_ipt = {k: v.copy() for k, v in ipt.items()}
        a.exp_avg_unc = {k: v.copy() for k, v in unc.items()}
        a.config.rank_pattern = None if pattern is None else dict(pattern)
