"""IIAD (SPEC.md section 5): which implicit iterations matter, and keeping those.

`influence` measures every (layer, iteration) of a trained IIET teacher;
`selection` turns the measurements into per-layer counts r_t for E-IIET.
The distillation stage itself lives with the other stages
(`iiet_jax/stages/distill.py`).
"""
