"""The stage contract for plugin authors: `from pipeline.stage import Stage, StageConfig`.

A stable, documented re-export of `pipeline.engine.stage`, so that third-party stages do not depend on
where the engine keeps it.
"""
from pipeline.engine.stage import Stage, StageConfig

__all__ = ["Stage", "StageConfig"]
