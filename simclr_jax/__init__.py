"""simclr_jax: SimCLR (Chen et al., ICML 2020) in JAX/Flax, from a laptop CPU to a TPU pod."""

__version__ = '0.1.0'
