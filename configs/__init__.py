"""ml_collections config files; pass one with --config=configs/NAME.py."""
