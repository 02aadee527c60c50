"""Parallelism: device meshes, the logical-axis rules, multi-host set-up,
the agreed stop on SIGTERM."""
