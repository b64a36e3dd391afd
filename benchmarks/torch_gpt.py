"""minift's GPT in PyTorch, for the side-by-side benchmark: the same model, weights copied.

Written as nanoGPT writes it (fused qkv, ``scaled_dot_product_attention`` with ``is_causal``,
``F.gelu(approximate="tanh")``, ``F.layer_norm``, the LM head tied to wte), from a minift model's
``named_parameters()``: every tensor is a copy of minift's array (Linear weights transposed to
PyTorch's [out, in]), trainable exactly when minift's Param is. LoRA layers (``lora_A`` [r, in],
``lora_B`` [out, r], PEFT's layout) add s·(x·Aᵀ)·Bᵀ, as minift's fast path does.

Imported only by the benchmark, and only when torch is installed: minift never imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF


class TorchGPT(torch.nn.Module):
    """``TorchGPT(minift_model)``: forward(idx [B, T] int64) -> logits [B, T, V], float32."""

    def __init__(self, model):
        super().__init__()
        cfg = model.config
        self.n_layer, self.n_head, self.C = cfg.n_layer, cfg.n_head, cfg.d_model
        self.eps = cfg.layer_norm_eps
        self.lora_scaling = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "scaling"):
                self.lora_scaling[name] = float(module.scaling)
        self.p = {}  # minift name (without ".base_layer") -> Parameter
        for name, param in model.named_parameters().items():
            value = np.asarray(param.value, dtype=np.float32)
            key = name.replace(".base_layer", "")
            if key.endswith(".weight") and value.ndim == 2 and _is_linear(key):
                value = value.T  # minift [in, out] -> torch [out, in]
            t = torch.nn.Parameter(
                torch.from_numpy(np.ascontiguousarray(value)), requires_grad=param.trainable
            )
            self.p[key] = t
            self.register_parameter(key.replace(".", "__"), t)

    def linear(self, x, name):
        """y = x·Wᵀ + b, plus s·(x·Aᵀ)·Bᵀ when the layer has LoRA."""
        p = self.p
        y = TF.linear(x, p[name + ".weight"], p.get(name + ".bias"))
        if name in self.lora_scaling:
            y = y + self.lora_scaling[name] * TF.linear(
                TF.linear(x, p[name + ".lora_A"]), p[name + ".lora_B"]
            )
        return y

    def forward(self, idx):
        p, C, nh = self.p, self.C, self.n_head
        B, T = idx.shape
        x = p["wte.weight"][idx] + p["wpe.weight"][:T]  # (B, T, C)
        for i in range(self.n_layer):
            h = f"h.{i}."
            a = TF.layer_norm(x, (C,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], self.eps)
            q, k, v = self.linear(a, h + "attn.c_attn").split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + self.linear(y, h + "attn.c_proj")
            m = TF.layer_norm(x, (C,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], self.eps)
            m = TF.gelu(self.linear(m, h + "mlp.c_fc"), approximate="tanh")
            x = x + self.linear(m, h + "mlp.c_proj")
        x = TF.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], self.eps)
        return TF.linear(x, p["wte.weight"])  # tied LM head, (B, T, V)

    def trainable(self):
        return [t for t in self.p.values() if t.requires_grad]


def _is_linear(name: str) -> bool:
    return any(part in name for part in (".c_attn.", ".c_proj.", ".c_fc.")) and not name.endswith(
        (".lora_A", ".lora_B")
    )


def make_step(model: TorchGPT, lr: float = 1e-3):
    """One training step as the minift benchmark runs it: forward, cross-entropy, zero_grad,
    backward, AdamW (weight decay 0). Returns (step(idx, targets) -> loss, optimizer)."""
    opt = torch.optim.AdamW(model.trainable(), lr=lr, weight_decay=0.0)

    def step(idx, targets):
        logits = model(idx)
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    return step, opt


def optimizer_state_bytes(opt) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in opt.state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.numel() > 1  # not the scalar step counters
    )
