"""simclr_jax: SimCLR (Chen et al., ICML 2020) in JAX/Flax, from a laptop CPU to a TPU pod.

Importing the package changes nothing in the process. CPU runs are faster with one XLA:CPU
setting that the entry points (simclr_jax.main, .plan, bench/) apply before JAX starts; a
notebook calls `from simclr_jax.cpu import xla_cpu; xla_cpu.configure()` first (cpu/xla_cpu.py).
"""

__version__ = '0.1.0'
