"""Channel-importance names of the channel_prune stage, without torch (its config validates against them)."""

CRITERIA = ("l1", "l2", "bn_scale", "taylor")
