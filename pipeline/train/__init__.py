"""The shared training loop every training stage runs (epochs, PGD-AT steps, LR schedules, progress saves),
and the best/final checkpoints a training stage keeps (checkpoints)."""
