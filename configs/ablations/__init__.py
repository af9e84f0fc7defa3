"""The paper's ablation studies at CPU scale, for `python -m simclr_jax.sweep`
(docs/ablations.md)."""
