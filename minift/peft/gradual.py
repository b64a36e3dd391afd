"""Gradual unfreezing (ULMFiT, Howard & Ruder, 2018): sft.py's policies as a schedule over epochs.

Epoch 0 trains the head alone; every further epoch unfreezes one more block, from the top down;
when every block is unfrozen, one last step unfreezes the embeddings too, so the schedule ends
at full fine-tuning as ULMFiT's does. Its rationale: the top layers are the most task-specific,
so they adapt first, while the general features below are protected from the large, noisy
gradients of a fresh head. (ULMFiT pairs it with per-layer learning rates,
``minift.optim.layerwise_lr_groups``.) Which modules are the head and the blocks is read from
the model as sft.py reads it, so the schedule works on a GPT, its classifier and BERT alike.
"""

from __future__ import annotations

from minift.nn import Module
from minift.peft.sft import blocks_of, check_k, full_finetune, head_name, head_only, last_k_blocks

__all__ = ["GradualUnfreezing"]


class GradualUnfreezing:
    """ULMFiT's gradual unfreezing (Howard & Ruder, 2018), one stage per epoch.

        epoch 0          the head alone                              (``head_only``)
        epoch e ≥ 1      the top min(e, n_layer) blocks, ln_f, head  (``last_k_blocks``)
        epoch L + 1      everything, the embeddings too              (``full_finetune``)

    ``n_layer`` is how many blocks the schedule unfreezes in all: by default every block of the
    model (L); the last, full stage is reached only when it is L. Call ``step_epoch()`` at the end
    of each epoch. The schedule owns the flags: every stage sets all of them again.

        schedule = GradualUnfreezing(model)
        for epoch in range(n_epochs):
            train_one_epoch(model)        # AdamW skips frozen Params; a newly unfrozen one
            schedule.step_epoch()         # starts its moments at its first gradient
    """

    def __init__(self, model: Module, n_layer: int | None = None):
        self.model = model
        self.n_blocks = len(blocks_of(model))
        head_name(model)  # fail now, not at the first epoch
        self.n_layer = (
            self.n_blocks if n_layer is None else check_k(n_layer, self.n_blocks, "n_layer")
        )
        self.epoch = 0
        self._apply()

    @property
    def trainable_blocks(self) -> list[int]:
        """Indices of the blocks that train at this epoch, e.g. [1] then [0, 1] for L = 2."""
        n = min(self.epoch, self.n_layer)
        return list(range(self.n_blocks - n, self.n_blocks))

    @property
    def embeddings_trainable(self) -> bool:
        return self.n_layer == self.n_blocks and self.epoch > self.n_blocks

    @property
    def done(self) -> bool:
        """True once a further ``step_epoch`` would unfreeze nothing more."""
        last = self.n_layer + 1 if self.n_layer == self.n_blocks else self.n_layer
        return self.epoch >= last

    def step_epoch(self) -> list[int]:
        """Advance one epoch, unfreeze the next stage; returns ``trainable_blocks``."""
        self.epoch += 1
        self._apply()
        return self.trainable_blocks

    def _apply(self) -> None:
        if self.embeddings_trainable:
            full_finetune(self.model)
        elif self.epoch == 0:
            head_only(self.model)
        else:
            last_k_blocks(self.model, min(self.epoch, self.n_layer))
