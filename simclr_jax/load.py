"""`from simclr_jax import load`: a pretraining checkpoint as an encoder, ready to embed images.

    enc = load.load_encoder('/tmp/simclr_demo')   # a workdir (its latest checkpoint) or one
    h = enc.embed(images)                          # checkpoint directory; local or gs://

The public face of simclr_jax/checkpoints/encoder.py (its docstring says more). No TensorFlow.
"""

from simclr_jax.checkpoints.encoder import Checkpoint  # pylint: disable=unused-import
from simclr_jax.checkpoints.encoder import CheckpointNotFoundError  # pylint: disable=unused-import
from simclr_jax.checkpoints.encoder import Encoder  # pylint: disable=unused-import
from simclr_jax.checkpoints.encoder import latest_step  # pylint: disable=unused-import
from simclr_jax.checkpoints.encoder import load_encoder  # pylint: disable=unused-import
from simclr_jax.checkpoints.encoder import locate  # pylint: disable=unused-import
