"""Fine-tuning methods, one chapter per file, with PEFT's names.

from minift.peft import get_peft_model, LoraConfig
peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
peft_model.print_trainable_parameters()

sft.py         supervised fine-tuning: full, head-only, last-k blocks, by pattern (§2.1)
gradual.py     gradual unfreezing: those policies as a schedule over epochs (ULMFiT)
sharing.py     the article's parameter sharing, A3
sparse.py      the article's sparse connections, A4 (sparse_mask.py: which connections stay)
lora.py        LoRA as published (A5, A6, A10, A11 mapped and corrected)
dora.py        DoRA: magnitude and direction
qlora.py       QLoRA: LoRA on a base frozen in 4-bit NF4 (minift/quant.py: the 4 bits)
adalora.py     AdaLoRA: P·Λ·Q with a shrinking rank budget (adalora_training.py: the budget,
               the regulariser and the training hook)
bitfit.py      biases only
ln_tuning.py   LN tuning: the LayerNorms' γ and β only, trained on copies
adapter.py     Houlsby adapters
ia3.py         IA3: learned rescaling vectors
vera.py        VeRA: frozen random projections shared by every layer, trained scaling vectors
loha.py        LoHa: a Hadamard product of two low-rank products
lokr.py        LoKr: a Kronecker product (lycoris.py: what LoHa and LoKr share, PEFT's
               LycorisConfig)
prompt.py      prompt tuning (prompt_learning.py: the config it shares with prefix tuning)
prefix.py      prefix tuning
adapted.py     the template every weight-level method's layer fills in (AdaptedLinear)
registry.py    the methods by their command-line names, each registered in its own file
base.py        PEFT's API: PeftConfig, get_peft_model, PeftModel (merge_and_unload, unload,
               save_pretrained, from_pretrained, print_trainable_parameters)
adapters.py    several adapters on one model: add_adapter, set_adapter, delete_adapter,
               disable_adapter, merge_adapter, load_adapter (mixed into PeftModel)
weighted_adapter.py  add_weighted_adapter: LoRA adapters combined ("linear", "cat", "svd")
targets.py     which layers a method wraps: target_modules, matched as PEFT matches them
peft_files.py  PEFT's adapter files, adapter_config.json and adapter_model.safetensors
config_json.py a config read back from a file, every field checked
counting.py    count_parameters: trainable and frozen, in total and per module

The article's worked equations that are not methods (A7, A8, A9) are in minift/article.py.
"""

# isort: off
# The chapters in the order of the list above: each registers its methods as it is imported
# (minift/peft/registry.py), so this is also the order the command line lists them in.
from minift.peft.sft import (
    FullFinetuneConfig,
    HeadOnlyConfig,
    LastKBlocksConfig,
    add_classification_head,
    freeze_by_pattern,
    full_finetune,
    head_only,
    last_k_blocks,
)
from minift.peft.gradual import GradualUnfreezing
from minift.peft.sharing import SharingConfig, share_across_blocks, tie_parameters
from minift.peft.sparse import MaskedLinear, SparseConfig, SparseDeltaLinear
from minift.peft.lora import LoraConfig, LoraLinear
from minift.peft.dora import DoraLinear
from minift.peft.qlora import QLoraConfig
from minift.peft.adalora import AdaLoraConfig, RankAllocator, SVDLinear, adalora_regularizer
from minift.peft.bitfit import BitFitConfig
from minift.peft.ln_tuning import LNTuningConfig, LNTuningLayer
from minift.peft.adapter import AdapterConfig, AdapterLinear
from minift.peft.ia3 import IA3Config, IA3Linear
from minift.peft.vera import VeraConfig, VeraLinear, VeraModel
from minift.peft.loha import LoHaConfig, LoHaLinear
from minift.peft.lokr import LoKrConfig, LoKrLinear
from minift.peft.prompt import PromptTuningConfig, PromptTuningModel
from minift.peft.prefix import PrefixTuningConfig, PrefixTuningModel

# isort: on
from minift.peft.base import PeftConfig, PeftModel, get_peft_model
from minift.peft.counting import count_parameters
from minift.peft.prompt_learning import PromptLearningConfig
from minift.peft.registry import METHODS, Method, Option, get_method, method_names
from minift.peft.targets import match_target_modules

__all__ = [
    "METHODS",
    "Method",
    "Option",
    "get_method",
    "method_names",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningModel",
    "AdaLoraConfig",
    "DoraLinear",
    "RankAllocator",
    "SVDLinear",
    "adalora_regularizer",
    "AdapterConfig",
    "AdapterLinear",
    "BitFitConfig",
    "FullFinetuneConfig",
    "GradualUnfreezing",
    "HeadOnlyConfig",
    "IA3Config",
    "IA3Linear",
    "LoHaConfig",
    "LoHaLinear",
    "LoKrConfig",
    "LoKrLinear",
    "LastKBlocksConfig",
    "LNTuningConfig",
    "LNTuningLayer",
    "LoraConfig",
    "LoraLinear",
    "MaskedLinear",
    "PeftConfig",
    "PeftModel",
    "QLoraConfig",
    "SharingConfig",
    "SparseConfig",
    "SparseDeltaLinear",
    "add_classification_head",
    "count_parameters",
    "freeze_by_pattern",
    "full_finetune",
    "get_peft_model",
    "head_only",
    "last_k_blocks",
    "match_target_modules",
    "share_across_blocks",
    "tie_parameters",
    "VeraConfig",
    "VeraLinear",
    "VeraModel",
]
