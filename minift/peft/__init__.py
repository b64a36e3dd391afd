"""Fine-tuning methods, one chapter per file, with PEFT's names.

from minift.peft import get_peft_model, LoraConfig
peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
peft_model.print_trainable_parameters()
"""

from minift.peft.base import (
    PeftConfig,
    PeftModel,
    count_parameters,
    get_peft_model,
    match_target_modules,
)
from minift.peft.lora import LoraConfig, LoraLinear

__all__ = [
    "LoraConfig",
    "LoraLinear",
    "PeftConfig",
    "PeftModel",
    "count_parameters",
    "get_peft_model",
    "match_target_modules",
]
