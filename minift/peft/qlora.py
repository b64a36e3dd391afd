r"""QLoRA: LoRA on a base frozen in 4 bits (Dettmers et al., 2023).

    y = x·Ŵ₀ + b + s · (x·Aᵀ)·Bᵀ,      Ŵ₀ = dequantize(NF4(W₀))

QLoRA changes nothing in LoRA's math (lora.py): only W₀ is stored differently. Every Linear of
the blocks becomes an ``NF4Linear`` (minift/quant.py: 16 normal-quantile levels, block-wise
absmax scaling over 64 weights, optionally the constants double-quantized), LoRA's A and B stay
in the compute dtype and train as before. The forward dequantizes Ŵ₀ and multiplies, the
backward's dx goes through the same Ŵ₀, and the codes get no gradient (they cannot move):

    du = s·dy·B       dB = s·dyᵀ·u       dA = duᵀ·x       dx = dy·Ŵ₀ᵀ + du·A

So the gradient is LoRA's on the model whose base IS Ŵ₀: what QLoRA trains is an adapter for the
quantized model, not for the float one (benchmarks/qlora.py measures the difference on a task).

Two ways in, the same model:

    quantize_model(model, QuantConfig(quant_type="nf4", blocksize=64, double_quant=False))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[...]))

or, as ``minift finetune --method qlora`` does it, one config that does both:

    peft_model = get_peft_model(model, QLoraConfig(r=8, lora_alpha=16, double_quant=True))

Merging dequantizes (adapted.py): the merged layer is a float Linear holding Ŵ₀ + ΔW, exact, and
unmerge restores the NF4 codes bit for bit. The adapter files are LoRA's, as PEFT writes them for
a 4-bit base (``peft_type`` "LORA"; the quantization belongs to the base model, not the adapter);
minift's own record of a fine-tuned model (``finetuned.json``) keeps the quantization too, as
``peft_type`` "MINIFT_QLORA", so that the model is rebuilt quantized before its codes load.

Trainable parameters: LoRA's, Σ over targets of r·(d_in + d_out). Memory of the base: 4 bits per
weight of the blocks plus the constants, 4.5 bits (4.127 double-quantized): see quant.py.

Shape legend: N positions, r rank, d_in / d_out the layer's in / out.
"""

from __future__ import annotations

from dataclasses import dataclass

from minift.peft.base import PEFT_TYPES
from minift.peft.lora import LORA_DEFAULTS, LORA_OPTIONS, LoraConfig
from minift.peft.lora_init import SVD_INITS
from minift.peft.registry import Option, register_method
from minift.quant import QuantConfig, quantize_model

QLORA_RECORD = "MINIFT_QLORA"  # the peft_type of minift's own record of a QLoRA model


@dataclass
class QLoraConfig(LoraConfig):
    """LoRA's fields and PEFT's names, plus how the base is quantized (``QuantConfig``'s)."""

    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = False

    fields_peft_lacks = (*LoraConfig.fields_peft_lacks, "quant_type", "blocksize", "double_quant")

    def __post_init__(self):
        super().__post_init__()
        self.quant_config()  # checks quant_type, blocksize and double_quant
        if self.init_lora_weights in SVD_INITS:
            raise ValueError(
                f"init_lora_weights: {self.init_lora_weights!r} moves part of W₀ into A and B and "
                "keeps a float residual; QLoRA's W₀ is quantized (use True or 'gaussian')"
            )
        if self.use_dora:
            raise ValueError("use_dora: DoRA on a quantized base is not implemented here")

    def quant_config(self) -> QuantConfig:
        return QuantConfig(self.quant_type, self.blocksize, self.double_quant)

    def apply(self, model, rng):
        quantize_model(model, self.quant_config())  # the model is frozen already
        super().apply(model, rng)

    def to_dict(self):
        return {**super().to_dict(), "peft_type": QLORA_RECORD}

    def peft_fields(self, peft_model):
        # the adapter file is LoRA's: PEFT loads it onto its own 4-bit base
        return {**super().peft_fields(peft_model), "peft_type": LoraConfig.peft_type}


PEFT_TYPES[QLORA_RECORD] = QLoraConfig  # minift's records; an adapter file says "LORA"

QLORA_OPTIONS = [
    *LORA_OPTIONS,
    Option("blocksize", "NF4 block size (weights per absmax constant)", low=2),
]

# the sweep chose LoRA's learning rates for both kinds of task: the trainable parameters, their
# init and the loss surface are LoRA's on a base that moved by the NF4 rounding only
# (‖W − Ŵ‖/‖W‖ ≈ 0.09: benchmarks/qlora.py)
register_method("qlora", QLoraConfig, "LoRA r=8 on an NF4 4-bit base (Dettmers et al. 2023)",
                lr=1e-2, classification_lr=3e-3, lr_grid=[1e-3, 3e-3, 1e-2, 3e-2],
                defaults=LORA_DEFAULTS, options=QLORA_OPTIONS)  # fmt: skip
