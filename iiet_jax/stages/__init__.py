"""Training stages: what is trained in which steps, around the shared loop.

`pretrain` plans a run as phases (one, or Transformer++ then IIET for the
two-stage recipe) and performs the switch between them; `merge` carries a
loaded tree into a fresh one for switches and warm starts.
"""
