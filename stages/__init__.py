"""The built-in stage types: one module each, registered here by name (no reinstall needed to add one).

Third-party packages add stage types through the entry-point group `pipeline.stages` instead.
"""

BUILTIN = {
    "dense_warmup": "stages.dense_warmup:DenseWarmup",
    "early_bird": "stages.early_bird:EarlyBird",
    "imp": "stages.imp:Imp",
    "rewire": "stages.rewire:Rewire",
    "channel_prune": "stages.channel_prune:ChannelPrune",
    "finetune": "stages.finetune:Finetune",
    "evaluate": "stages.evaluate:Evaluate",
    "export": "stages.export:Export",
    "runtime_check": "stages.runtime_check:RuntimeCheck",
}
