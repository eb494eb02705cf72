"""The training loop: the compiled inner step, the outer loop, tf.distribute and cluster setup."""
