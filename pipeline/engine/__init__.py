"""The engine: config, registry, runner, run directory, checkpoints store, locking, CLI. No ML knowledge."""
