"""Small helpers shared by the tests."""


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


# -- the optional references of the tests marked `reference` ---------------------------------------
# (PyTorch, transformers, PEFT: never minift's dependencies; CI gives them a venv of their own)


def import_references():
    """(torch, transformers, peft), or skip the calling test with the reason."""
    import pytest

    torch = pytest.importorskip("torch", reason="PyTorch is an optional reference")
    transformers = pytest.importorskip("transformers", reason="transformers is optional")
    peft = pytest.importorskip("peft", reason="Hugging Face PEFT is optional")
    return torch, transformers, peft


def hf_gpt2(model, folder):
    """``model`` saved to ``folder`` and read back by transformers' GPT2LMHeadModel, in float64.

    Call it before get_peft_model wraps ``model``: the folder must hold the base weights.
    """
    from minift.checkpoint import save_model

    torch, transformers, _ = import_references()
    save_model(model, folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float64)
