"""Everything that exists only because of XLA:CPU: the XLA_FLAGS setting (xla_cpu.py) and the
convolution / pool / block-output kernels (kernels.py). Deletable as one unit when XLA:CPU
catches up (then the jobs' `ops.model_ops(config)` calls become resnet.XLA_OPS). ops.py decides
which the model uses; importing this package imports nothing.
"""
