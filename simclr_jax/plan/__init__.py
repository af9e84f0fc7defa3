"""Compile-only planning and utilisation: what a config needs and costs before a pod is rented.

`python -m simclr_jax.plan --config=...` (__main__.py): train_plan compiles the real train step,
eval_plan the evaluation functions; chips holds the accelerators' memory and peak FLOP/s, flops
the analytic FLOP count, utilization the MFU that progress lines report. Importing this package
imports no JAX (the plan sets the device count before JAX starts).
"""
