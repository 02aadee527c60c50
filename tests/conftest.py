"""Test-session set-up: CPU devices, XLA flags and JAX settings (before any
test imports JAX), and the suite's fixtures. Helpers live in support.py
(models) and training.py (run configs); import them from there."""

from __future__ import annotations

import os

# Tiny test models spend most of their time in XLA's CPU compiler; its cheapest
# optimisation level halves that and leaves float32 results within tolerance.
# Tests run on the CPU; libtpu (for the AOT check) must not probe for TPUs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight fake CPU devices let the sharding tests build real meshes.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0"
                           " --xla_force_host_platform_device_count=8").strip()

import jax

# Float32 matmuls at full precision so comparisons test the math, not the
# backend's choice of fast accumulation.
jax.config.update("jax_default_matmul_precision", "highest")
