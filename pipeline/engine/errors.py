"""Errors a user can act on. The CLI turns each into one clear message and an exit code."""
from __future__ import annotations


class PipelineError(Exception):
    """An error with a message meant for the user and the exit code the CLI returns."""

    exit_code = 1


class ConfigError(PipelineError):
    """The config (file or --set override) is invalid. `problems` lists 'dotted.path: message' lines."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class CheckpointError(PipelineError):
    """A stored file is missing, truncated, altered, or of the wrong kind."""

    exit_code = 4


class LockError(PipelineError):
    """Another live process holds the run directory."""

    exit_code = 3


class StageFailed(PipelineError):
    """A stage ran and failed a check of its own (e.g. ONNX parity, a non-finite training loss)."""

    exit_code = 5


class StageCrashed(PipelineError):
    """Something unexpected stopped a stage (a full disk, a library error): exit 1, a plain message."""

    exit_code = 1


class UsageError(PipelineError):
    """A bad command-line argument or environment the user must fix (no GPU, a read-only directory)."""

    exit_code = 2


class DataError(PipelineError):
    """A dataset cannot be found or read."""

    exit_code = 2
