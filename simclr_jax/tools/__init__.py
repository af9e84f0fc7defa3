"""Command-line helpers (run with python -m simclr_jax.tools.<name>)."""
