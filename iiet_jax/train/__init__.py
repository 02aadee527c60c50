"""Training: losses (and, as they land, the train state, steps and stages)."""
