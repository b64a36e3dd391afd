"""Small helpers shared by the tests."""


def well_spread_rows(rng, *shape):
    """Rows of unit spread: near a constant row LayerNorm's curvature grows like 1/σ³ and a
    finite difference stops measuring the derivative, whatever the backward does."""
    x = rng.standard_normal(shape)
    return x / x.std(axis=-1, keepdims=True) + rng.standard_normal(shape[:-1] + (1,))
