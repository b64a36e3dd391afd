"""What prompt tuning and prefix tuning share: PEFT's prompt-learning config.

Both methods train n "virtual tokens" (prompt.py puts them in front of the input, prefix.py in
front of every attention layer's keys and values); their configs share PEFT's fields, which
describe the model and are filled in from it, and neither wraps a layer, so neither merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minift.errors import check_int
from minift.model import GPT, GPTForSequenceClassification
from minift.peft.base import PeftConfig, PeftModel
from minift.peft.registry import Option

__all__ = ["VIRTUAL_TOKENS", "PromptLearningConfig", "remove_prompt_encoder"]

VIRTUAL_TOKENS = Option("num_virtual_tokens", "virtual tokens n", low=1)  # both methods' option


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields of PEFT's prompt-learning configs (prompt tuning, prefix tuning).

    ``token_dim``, ``num_layers``, ``num_attention_heads`` and ``task_type`` describe the model;
    left None they are filled in from it by get_peft_model (as PEFT does), and given, they must
    match it. ``inference_mode`` is PEFT's: its saved files say True, and an adapter loaded
    that way is built only to receive the saved tensors.
    """

    num_virtual_tokens: int | None = None  # n, required
    token_dim: int | None = None  # C (d_model)
    num_transformer_submodules: int = 1  # 1 for a decoder-only model
    num_attention_heads: int | None = None
    num_layers: int | None = None
    task_type: str | None = None  # "CAUSAL_LM" (GPT) or "SEQ_CLS" (GPTForSequenceClassification)
    inference_mode: bool = False

    mergeable = False  # nothing to fold into a weight: the prompt is an input
    default_target_modules = ()
    fields_peft_lacks = ("target_modules",)  # PEFT's prompt-learning configs have none
    peft_model_class: ClassVar[type[PeftModel]] = PeftModel

    def __post_init__(self):
        super().__post_init__()
        check_int("num_virtual_tokens", self.num_virtual_tokens)
        if self.target_modules is not None:
            raise ValueError(
                f"target_modules: {type(self).__name__} changes no module, so it takes none; "
                f"got {self.target_modules!r}"
            )
        if self.num_transformer_submodules != 1:
            raise ValueError(
                "num_transformer_submodules: expected 1 (minift's GPT is decoder-only), "
                f"got {self.num_transformer_submodules!r}"
            )
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            check_int(name, getattr(self, name), optional=True)
        if self.task_type not in (None, "CAUSAL_LM", "SEQ_CLS"):
            raise ValueError(
                f"task_type: expected 'CAUSAL_LM', 'SEQ_CLS' or None, got {self.task_type!r}"
            )

    def _prepare(self, model) -> None:
        """Fill in (or check) the fields that describe the model: PEFT's preparation step."""
        if not isinstance(model, GPT):
            raise TypeError(f"model: expected a minift GPT, got {type(model).__name__}")
        if "prompt_encoder" in vars(model):
            raise ValueError("model: already has a prompt_encoder; unload() the first one")
        c = model.config
        task = "SEQ_CLS" if isinstance(model, GPTForSequenceClassification) else "CAUSAL_LM"
        for name, actual in (
            ("token_dim", c.d_model),
            ("num_layers", c.n_layer),
            ("num_attention_heads", c.n_head),
            ("task_type", task),
        ):
            given = getattr(self, name)
            if given is None:
                setattr(self, name, actual)
            elif given != actual:
                raise ValueError(f"{name}: the model has {actual!r}, the config says {given!r}")


def remove_prompt_encoder(model):
    """Undo get_peft_model for a prompt-learning method: drop ``prompt_encoder`` and make every
    Param trainable again, as the model was before it was wrapped."""
    del model.prompt_encoder
    for p in model.parameters():
        p.trainable = True
    return model
