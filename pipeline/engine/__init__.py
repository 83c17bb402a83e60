"""The engine: config, registry, runner, the stage context, the run-directory read model (rundir), progress
files, typed stage.json sections, seeding, checkpoints store, locking, CLI. No ML knowledge."""
