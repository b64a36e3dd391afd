"""Layers: Modules that hold Params, call the pairs of ``minift.functional`` and keep their cache.

A Module's ``forward(x)`` computes its output and remembers what its backward needs;
``backward(dout)`` returns the gradient with respect to its input and ADDS the gradients of its
Params into ``Param.grad``. Nothing is cleared implicitly: call ``zero_grad()`` before each backward
pass (the training loop does). Because grads accumulate, a Param held by two modules (the tied LM
head, parameter sharing A3) gets the sum of the gradients of its uses, with no special code.

A Module instance remembers ONE forward pass (the last): share Params between modules, never one
module between two places in a network.

Names follow Hugging Face's GPT-2 (``h.0.attn.c_attn.weight``), with Linear weights stored
[in, out] as GPT-2 stores them, so the optimizer, the gradient checker, the parameter counter and
the checkpoints all speak the same keys.

What runs: LayerNorm, GELU, the attention and the embedding's backward run the fused variants
that sit beneath their clear pairs in ``minift.functional`` (the same math with fewer temporary
arrays, each tested equal to its pair). One switch makes every layer run the clear pairs instead:

    with nn.clear_ops():    # or MINIFT_CLEAR_OPS=1 in the environment, read at import
        ...                 # every forward in here, and later its backward, runs the clear pairs

Each layer reads the switch in its forward and records the choice in its cache, so its backward
runs the pair its forward ran even if the switch has flipped in between. The switch is one
process-wide flag, not a per-thread one, so the threads of ``minift.parallel`` read what their
caller set; set it from one thread only.

Shape legend: B batch, T time, C channels (d_model), nh heads, hs head size, P extra key rows.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from minift import functional as F
from minift.param import Param

__all__ = [
    "Param",
    "Module",
    "ModuleList",
    "Linear",
    "Embedding",
    "LayerNorm",
    "GELU",
    "Dropout",
    "MLP",
    "LayerKVCache",
    "Attention",
    "Block",
    "add_fresh_grad",
    "check_model_dtype",
    "clear_ops",
    "clear_ops_enabled",
]


# ------------------------------------------------------------------------------------------------
# The switch between the fused variants (the default: faster) and the clear pairs

CLEAR_OPS_ENV = "MINIFT_CLEAR_OPS"


def _clear_ops_from_env() -> bool:
    value = os.environ.get(CLEAR_OPS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{CLEAR_OPS_ENV}: expected 0 or 1 (or unset), got {value!r}")
    return value == "1"


_clear_ops = _clear_ops_from_env()


def clear_ops_enabled() -> bool:
    """True when the layers' forwards run the clear pairs of ``minift.functional``."""
    return _clear_ops


@contextlib.contextmanager
def clear_ops(enabled: bool = True):
    """Run every layer's forward on the clear pairs (``enabled=False``: on the fused variants)
    inside the block; the previous setting comes back on exit, so blocks nest."""
    global _clear_ops
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    previous, _clear_ops = _clear_ops, enabled
    try:
        yield
    finally:
        _clear_ops = previous


class Module:
    """Base class: parameter discovery, train/eval, gradients and strict state dicts."""

    training = True

    # -- the tree of modules and params ------------------------------------------------------

    def _children(self):
        """(name, Module) pairs in the order they were assigned."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def _child(self, name: str) -> Module:
        child = getattr(self, name, None)
        if not isinstance(child, Module):
            raise KeyError(name)
        return child

    def _set_child(self, name: str, module: Module) -> None:
        self._child(name)
        setattr(self, name, module)

    def named_modules(self, prefix: str = ""):
        """Yield (dotted name, Module) for this module and every module below it."""
        yield prefix, self
        for name, child in self._children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def get_submodule(self, name: str) -> Module:
        module = self
        for part in name.split(".") if name else []:
            try:
                module = module._child(part)
            except (KeyError, IndexError, ValueError):
                raise KeyError(f"module name: no submodule {name!r} (failed at {part!r})") from None
        return module

    def set_submodule(self, name: str, module: Module) -> None:
        """Replace the submodule at a dotted name (how PEFT methods wrap a layer)."""
        parent_name, _, last = name.rpartition(".")
        parent = self.get_submodule(parent_name)
        try:
            parent._set_child(last, module)
        except (KeyError, IndexError, ValueError):
            raise KeyError(f"module name: no submodule {name!r}") from None

    def named_parameters(self, prefix: str = "") -> dict[str, Param]:
        """name -> Param for every Param below this module, each Param once (first name wins).

        A Param shared by several modules (A3) appears once, under the name of its first use, so
        the optimizer steps it once and the parameter count counts it once.
        """
        seen: set[int] = set()
        out: dict[str, Param] = {}
        for mod_name, module in self.named_modules(prefix):
            for attr, value in vars(module).items():
                if isinstance(value, Param) and id(value) not in seen:
                    seen.add(id(value))
                    out[f"{mod_name}.{attr}" if mod_name else attr] = value
        return out

    def parameters(self) -> list[Param]:
        return list(self.named_parameters().values())

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.trainable or not trainable_only)

    # -- modes and gradients -----------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active) here and below; ``eval()`` is ``train(False)``."""
        for _, module in self.named_modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # -- state dicts ------------------------------------------------------------------------

    # names of a module's frozen arrays that are not Params (a quantized layer's codes and
    # scales: minift.quant): saved and loaded with the Params, never trained, never counted
    buffers: tuple[str, ...] = ()

    def named_buffers(self, prefix: str = "") -> dict[str, np.ndarray]:
        """name -> array for every buffer below this module (see ``buffers``)."""
        return {
            f"{mod_name}.{attr}" if mod_name else attr: getattr(module, attr)
            for mod_name, module in self.named_modules(prefix)
            for attr in module.buffers
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> a copy of every Param's value (shared Params once, as in named_parameters),
        and of every buffer's."""
        out = {name: p.value.copy() for name, p in self.named_parameters().items()}
        return out | {name: a.copy() for name, a in self.named_buffers().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy values in, strictly: every key present, no extra key, every shape equal (and
        every buffer's dtype: its codes mean nothing in another).

        Values are copied INTO the existing arrays, so Params shared between modules stay shared;
        floating-point values are cast to the model's dtype. Nothing is changed unless all keys
        check out.
        """
        params = self.named_parameters()
        buffers = self.named_buffers()
        missing = [k for k in [*params, *buffers] if k not in state]
        unexpected = [k for k in state if k not in params and k not in buffers]
        mismatched = [
            f"{k}: expected shape {params[k].shape}, got {tuple(np.shape(state[k]))}"
            for k in params
            if k in state and tuple(np.shape(state[k])) != params[k].shape
        ]
        not_float = [
            f"{k}: expected floating-point values, got dtype {np.asarray(state[k]).dtype}"
            for k in params
            if k in state and np.asarray(state[k]).dtype.kind != "f"
        ]
        # a buffer holds codes, not values: its dtype is part of what it means, so it must match
        mismatched += [
            f"{k}: expected shape {a.shape} and dtype {a.dtype}, got "
            f"{tuple(np.shape(state[k]))} and {np.asarray(state[k]).dtype}"
            for k, a in buffers.items()
            if k in state and (np.shape(state[k]), np.asarray(state[k]).dtype) != (a.shape, a.dtype)
        ]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched))
        if not_float:
            problems.append("wrong dtype: " + "; ".join(not_float))
        if problems:
            raise ValueError("state_dict does not match the model: " + " | ".join(problems))
        for k, p in params.items():
            np.copyto(p.value, np.asarray(state[k]), casting="unsafe")
        for k, a in buffers.items():
            np.copyto(a, np.asarray(state[k]))


class ModuleList(Module):
    """A list of modules named "0", "1", … (the ``h`` of GPT-2's ``h.0.attn``)."""

    def __init__(self, modules):
        self._items = list(modules)

    def _children(self):
        for i, module in enumerate(self._items):
            yield str(i), module

    def _child(self, name: str) -> Module:
        return self._items[int(name)]

    def _set_child(self, name: str, module: Module) -> None:
        self._items[int(name)] = module

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


# ------------------------------------------------------------------------------------------------


def check_model_dtype(dtype) -> np.dtype:
    """A whole model's dtype: float32 to train, float64 for the gradient checks; nothing else."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 (training) or float64 (checks), got {dtype}")
    return dtype


def add_fresh_grad(p: Param, g: np.ndarray) -> None:
    """``p.accumulate_grad(g)`` for a g that the caller has just computed and holds nowhere else:
    the first gradient of a step is kept as it is, instead of being copied into a new array."""
    if p.trainable and p.grad is None and g.shape == p.shape and g.dtype == p.dtype:
        p.grad = g
    else:
        p.accumulate_grad(g)


def _normal(rng, shape, std, dtype):
    return (rng.standard_normal(shape) * std).astype(dtype)


class Linear(Module):
    """y = x·W + b with W [in, out] (GPT-2's Conv1D layout).

    A frozen weight (``weight.trainable = False``) gets no dW; dx still flows through it.
    """

    def __init__(self, in_features, out_features, bias=True, *, rng, dtype=np.float32, std=0.02):
        self.in_features, self.out_features = in_features, out_features
        self.weight = Param(_normal(rng, (in_features, out_features), std, dtype))
        self.bias = Param(np.zeros(out_features, dtype=dtype)) if bias else None
        self._cache = None

    def forward(self, x):  # [..., in] -> [..., out]
        out, self._cache = F.linear_forward(
            x, self.weight.value, None if self.bias is None else self.bias.value
        )
        return out

    def backward(self, dout):  # [..., out] -> [..., in]
        need_db = self.bias is not None and self.bias.trainable
        dx, dW, db = F.linear_backward(dout, self._cache, self.weight.trainable, need_db)
        if dW is not None:
            add_fresh_grad(self.weight, dW)
        if db is not None:
            add_fresh_grad(self.bias, db)
        return dx


class Embedding(Module):
    """out[b, t] = W[ids[b, t]], W [num_embeddings, dim]; backward scatter-adds into dW."""

    def __init__(self, num_embeddings, dim, *, rng, dtype=np.float32, std=0.02):
        self.weight = Param(_normal(rng, (num_embeddings, dim), std, dtype))
        self._cache = None

    def forward(self, ids):  # int [...] -> [..., dim]
        out, cache = F.embedding_forward(ids, self.weight.value)
        self._cache = (_clear_ops, cache)  # the backward is the only part with a fused variant
        return out

    def backward(self, dout):
        clear, cache = self._cache
        if self.weight.trainable:
            bwd = F.embedding_backward if clear else F.embedding_backward_sorted
            add_fresh_grad(self.weight, bwd(dout, cache))


class LayerNorm(Module):
    """y = (x − μ)/√(σ² + eps)·weight + bias over the last axis."""

    def __init__(self, dim, eps=1e-5, *, dtype=np.float32):
        self.eps = eps
        self.weight = Param(np.ones(dim, dtype=dtype))
        self.bias = Param(np.zeros(dim, dtype=dtype))
        self._cache = None

    def forward(self, x):  # [..., C] -> [..., C]
        clear = _clear_ops
        fwd = F.layer_norm_forward if clear else F.layer_norm_forward_fused
        out, cache = fwd(x, self.weight.value, self.bias.value, self.eps)
        self._cache = (clear, cache)
        return out

    def backward(self, dout):
        clear, cache = self._cache
        need_dparams = self.weight.trainable or self.bias.trainable  # frozen: no dγ, dβ
        if clear:
            dx, dgamma, dbeta = F.layer_norm_backward(dout, cache)
        else:
            dx, dgamma, dbeta = F.layer_norm_backward_fused(dout, cache, need_dparams)
        if need_dparams:
            add_fresh_grad(self.weight, dgamma)
            add_fresh_grad(self.bias, dbeta)
        return dx


class GELU(Module):
    """GELU, tanh approximation (GPT-2) by default, or the exact erf form (``exact=True``, BERT)."""

    def __init__(self, exact=False):
        self.exact = exact
        self._cache = None

    def forward(self, x):
        clear = _clear_ops
        if self.exact:
            fwd = F.gelu_erf_forward if clear else F.gelu_erf_forward_fused
        else:
            fwd = F.gelu_forward if clear else F.gelu_forward_fused
        out, cache = fwd(x)
        self._cache = (clear, cache)
        return out

    def backward(self, dout):
        clear, cache = self._cache
        if self.exact:
            return F.gelu_erf_backward(dout, cache)
        return (F.gelu_backward if clear else F.gelu_backward_fused)(dout, cache)


class Dropout(Module):
    """Inverted dropout with probability p, active only in training mode."""

    def __init__(self, p, *, rng):
        self.p = float(p)
        self.rng = rng
        self._cache = None

    def forward(self, x):
        out, self._cache = F.dropout_forward(x, self.p if self.training else 0.0, self.rng)
        return out

    def backward(self, dout):
        return F.dropout_backward(dout, self._cache)


class MLP(Module):
    """x → c_fc (C → 4C) → GELU → c_proj (4C → C) → dropout."""

    def __init__(self, d_model, dropout, *, rng, dtype, proj_std):
        self.c_fc = Linear(d_model, 4 * d_model, rng=rng, dtype=dtype)
        self.act = GELU()
        self.c_proj = Linear(4 * d_model, d_model, rng=rng, dtype=dtype, std=proj_std)
        self.dropout = Dropout(dropout, rng=rng)

    def forward(self, x):  # [B, T, C] -> [B, T, C]
        return self.dropout.forward(self.c_proj.forward(self.act.forward(self.c_fc.forward(x))))

    def backward(self, dout):
        dh = self.c_proj.backward(self.dropout.backward(dout))
        return self.c_fc.backward(self.act.backward(dh))


class LayerKVCache:
    """The keys and values of the tokens seen so far by one attention layer, for generation."""

    def __init__(self):
        self.k = None  # (B, nh, P, hs)
        self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k, v):
        self.k = k if self.k is None else np.concatenate([self.k, k], axis=2)
        self.v = v if self.v is None else np.concatenate([self.v, v], axis=2)


class Attention(Module):
    """Causal multi-head self-attention: c_attn (C → 3C: q, k, v) → heads → c_proj (C → C).

    ``prefix`` (None by default) may hold a module whose ``forward(B)`` returns key/value rows
    (k, v) [B, nh, P, hs] that every query also attends to, and whose ``backward(dk, dv)`` takes
    their gradients: the hook prefix tuning plugs into (its ``n_positions`` = P tells the GPT
    that the rows count as P earlier tokens, so the sequence's positions start at P).
    ``kv_cache`` (generation) supplies the keys/values of earlier tokens and receives this
    call's.
    """

    def __init__(self, d_model, n_head, dropout, *, rng, dtype, proj_std):
        if d_model % n_head:
            raise ValueError(f"n_head: must divide d_model={d_model}, got {n_head}")
        self.n_head = n_head
        self.c_attn = Linear(d_model, 3 * d_model, rng=rng, dtype=dtype)
        self.c_proj = Linear(d_model, d_model, rng=rng, dtype=dtype, std=proj_std)
        self.resid_dropout = Dropout(dropout, rng=rng)
        self.prefix = None
        self._cache = None

    def forward(self, x, mask=None, kv_cache: LayerKVCache | None = None):  # [B,T,C] -> [B,T,C]
        clear = _clear_ops
        qkv = self.c_attn.forward(x)  # (B, T, 3C)
        extra_k = extra_v = None
        n_prefix = 0
        if self.prefix is not None:
            extra_k, extra_v = self.prefix.forward(x.shape[0])
            n_prefix = extra_k.shape[2]
        if kv_cache is not None and kv_cache.length:
            extra_k = kv_cache.k if extra_k is None else np.concatenate([extra_k, kv_cache.k], 2)
            extra_v = kv_cache.v if extra_v is None else np.concatenate([extra_v, kv_cache.v], 2)
        if extra_k is None and not clear:  # the fused variant takes no extra key rows
            y, mha_cache = F.mha_forward_fused(qkv, self.n_head, mask)
        else:
            y, mha_cache = F.mha_forward(qkv, self.n_head, mask, extra_k, extra_v)
        if kv_cache is not None:
            C = qkv.shape[-1] // 3
            kv_cache.append(
                F.split_heads(qkv[..., C : 2 * C], self.n_head),
                F.split_heads(qkv[..., 2 * C :], self.n_head),
            )
        self._cache = (clear, mha_cache, n_prefix)
        return self.resid_dropout.forward(self.c_proj.forward(y))

    def backward(self, dout):
        clear, mha_cache, n_prefix = self._cache
        dy = self.c_proj.backward(self.resid_dropout.backward(dout))
        mha_backward = F.mha_backward if clear else F.mha_backward_fused
        dqkv, dextra_k, dextra_v = mha_backward(dy, mha_cache)
        if self.prefix is not None:
            self.prefix.backward(dextra_k[:, :, :n_prefix], dextra_v[:, :, :n_prefix])
        return self.c_attn.backward(dqkv)

    def forward_at(self, x, rows, mask=None):  # [B, T, C], int [B] -> [B, 1, C]
        """The output at ONE position per sequence, rows[b]: what a head reading only those
        positions needs (the classifier's). Its query attends to keys 0..rows[b] (and a
        prefix's rows): the same row of ``forward``'s output, for B·1 queries instead of B·T.
        Every position's key and value are still needed, so c_attn runs on all of x."""
        B, T, C = x.shape
        qkv = self.c_attn.forward(x)  # (B, T, 3C)
        q = F.split_heads(qkv[np.arange(B), rows, None, :C], self.n_head)  # (B, nh, 1, hs)
        k = F.split_heads(qkv[..., C : 2 * C], self.n_head)  # (B, nh, T, hs)
        v = F.split_heads(qkv[..., 2 * C :], self.n_head)
        n_prefix = 0
        if self.prefix is not None:
            extra_k, extra_v = self.prefix.forward(B)
            n_prefix = extra_k.shape[2]
            k, v = np.concatenate([extra_k, k], 2), np.concatenate([extra_v, v], 2)
        # a prefix's rows, then row rows[b] of the causal mask: positions up to rows[b] are seen
        M = np.zeros((B, 1, 1, n_prefix + T), dtype=qkv.dtype)
        M[:, 0, 0, n_prefix:] = F.causal_mask_cached(T, T, qkv.dtype)[rows]
        if mask is not None:  # forward's mask [.., T, P + T]: its row rows[b] of sequence b
            full = np.broadcast_to(mask, (B, self.n_head, T, n_prefix + T))
            M = M + full[np.arange(B), :, rows][:, :, None]
        y, att_cache = F.attention_forward(q, k, v, mask=M, causal=False)  # (B, nh, 1, hs)
        self._cache = (att_cache, n_prefix, rows, qkv.shape)
        return self.resid_dropout.forward(self.c_proj.forward(F.merge_heads(y)))

    def backward_at(self, dout):  # [B, 1, C] -> [B, T, C]
        """``forward_at``'s backward: dq lands on the rows[b] it came from, dk and dv on every
        position (and a prefix's rows)."""
        att_cache, n_prefix, rows, qkv_shape = self._cache
        B, T, C3 = qkv_shape
        C = C3 // 3
        dy = self.c_proj.backward(self.resid_dropout.backward(dout))  # (B, 1, C)
        dq, dk, dv = F.attention_backward(F.split_heads(dy, self.n_head), att_cache)
        if self.prefix is not None:
            self.prefix.backward(dk[:, :, :n_prefix], dv[:, :, :n_prefix])
        dqkv = np.zeros(qkv_shape, dtype=dy.dtype)
        dqkv[np.arange(B), rows, :C] = F.merge_heads(dq)[:, 0]
        dqkv[..., C : 2 * C] = F.merge_heads(dk[:, :, n_prefix:])
        dqkv[..., 2 * C :] = F.merge_heads(dv[:, :, n_prefix:])
        return self.c_attn.backward(dqkv)


class Block(Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, d_model, n_head, dropout, *, rng, dtype, proj_std, eps=1e-5):
        self.ln_1 = LayerNorm(d_model, eps, dtype=dtype)
        self.attn = Attention(d_model, n_head, dropout, rng=rng, dtype=dtype, proj_std=proj_std)
        self.ln_2 = LayerNorm(d_model, eps, dtype=dtype)
        self.mlp = MLP(d_model, dropout, rng=rng, dtype=dtype, proj_std=proj_std)

    def forward(self, x, mask=None, kv_cache=None):  # [B, T, C] -> [B, T, C]
        x = x + self.attn.forward(self.ln_1.forward(x), mask, kv_cache)
        return x + self.mlp.forward(self.ln_2.forward(x))

    def backward(self, dout):
        # forward was x2 = x1 + mlp(ln_2(x1)), so dx1 = dx2 + ln_2ᵀ(mlpᵀ(dx2)); likewise for attn.
        dx = dout + self.ln_2.backward(self.mlp.backward(dout))
        return dx + self.ln_1.backward(self.attn.backward(dx))

    def forward_at(self, x, rows, mask=None):  # [B, T, C], int [B] -> [B, 1, C]
        """``forward``'s output at one position per sequence, rows[b], computed there only:
        attention reads every earlier position, but its output projection, ln_2 and the MLP
        (three quarters of a block's arithmetic) run on B rows instead of B·T."""
        B = x.shape[0]
        x_at = x[np.arange(B), rows, None]  # (B, 1, C)
        x_at = x_at + self.attn.forward_at(self.ln_1.forward(x), rows, mask)
        self._rows = (rows, x.shape)
        return x_at + self.mlp.forward(self.ln_2.forward(x_at))

    def backward_at(self, dout):  # [B, 1, C] -> [B, T, C]
        rows, x_shape = self._rows
        dx_at = dout + self.ln_2.backward(self.mlp.backward(dout))  # (B, 1, C)
        dx = self.ln_1.backward(self.attn.backward_at(dx_at))  # (B, T, C)
        dx[np.arange(x_shape[0]), rows] += dx_at[:, 0]  # the skip path: only the rows it read
        return dx
