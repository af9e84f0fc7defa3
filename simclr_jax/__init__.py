"""simclr_jax: SimCLR (Chen et al., ICML 2020) in JAX/Flax, from a laptop CPU to a TPU pod."""

from simclr_jax import xla_cpu as _xla_cpu

# Before any JAX computation starts the CPU backend: multi-threaded CPU convolutions (xla_cpu.py).
_xla_cpu.configure()

__version__ = '0.1.0'
