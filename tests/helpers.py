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
