"""The one error hierarchy of the orchestrator.

A user's mistake is an `OrchestratorError` subclass whose message is one clear
paragraph: what is wrong, where (key path, file, column) and what is allowed.
The CLI prints it without a traceback and exits 2. Every error here survives
pickling, because errors raised inside Ray workers cross process boundaries.
"""

from __future__ import annotations

from typing import Sequence


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message


class SpecError(OrchestratorError):
    """The job file is wrong: carries every problem found, each with its key path."""

    def __init__(self, problems: Sequence[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"Invalid job{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"Invalid job{where} ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.problems, self.source))


class DataError(OrchestratorError):
    """The Parquet data cannot serve this job (missing path, schema, columns, size)."""


class CheckpointError(OrchestratorError):
    """A checkpoint is incomplete, corrupt or unsafe to load."""


class LaunchError(OrchestratorError):
    """The run cannot be started or placed (no cluster, too few resources, run folder clash)."""


class TrainingError(OrchestratorError):
    """Training itself failed: a non-finite loss, or workers that kept failing past the retries."""

    exit_code = 1


class ReportError(OrchestratorError):
    """A run folder cannot be read back or reported on (no run there, a missing optional package)."""


class SettingError(OrchestratorError):
    """An environment setting (declared in `settings`) holds a value its reader cannot use; the
    message names the variable, its value and what is allowed."""


def first_line(error: BaseException | str, *, last: bool = False) -> str:
    """The first (or, with `last`, the last) non-empty line of `error`'s message; its type name if it has none."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(error).__name__
