"""Host-side input: sources (embedded set, TFDS), augmentation and tf.data pipelines.

This is the only package that imports TensorFlow.
"""
