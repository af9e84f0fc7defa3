"""ml_collections config files; pass one with --config=configs/NAME.py.

The recipes import their base (`from configs import default`), so run from the repository root,
or put the checkout on PYTHONPATH when running from elsewhere. A file may take an argument after
a colon, passed to its get_config: configs/cifar10_r18.py:pretrain.
"""
