"""Keras, when a test imports it (tests/models/keras_reference.py), runs on JAX: no TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
