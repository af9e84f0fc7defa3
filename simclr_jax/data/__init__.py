"""Host-side input: sources (embedded set, TFDS), augmentation and tf.data pipelines.

The training path's TensorFlow use is here (tf.data, tf.image); elsewhere only the checkpoint
converter (TF's checkpoint reader), main (to hide accelerators from TF) and tools/ import it.
"""
