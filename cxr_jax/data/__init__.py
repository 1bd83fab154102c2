"""Data sources, the embedded phantom and tf.data pipelines."""
