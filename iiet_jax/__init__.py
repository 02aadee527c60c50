"""iiet_jax: pre-training the Iterative Implicit Euler Transformer in JAX/Flax."""

__version__ = "0.1.0"

import time as _time

# When this process started (imported the package): goodput's start-up
# time begins here (iiet_jax/train/goodput.py).
STARTED = _time.time()
