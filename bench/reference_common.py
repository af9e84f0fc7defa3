"""Constants shared by the reference implementations (pytorch_reference.py, tf2_reference.py).

Written down from the papers and the official code, not imported from simclr_jax: the references
are checked against simclr_jax (tests/test_pytorch_reference.py), so they must not share its code.
"""

BLOCKS_PER_GROUP = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BN_EPSILON = 1e-5
BN_DECAY = 0.9
LARGE_NUM = 1e9
PROJ_OUT_DIM = 128
