"""Why a worker group failed, in one paragraph a user can act on.

Owns the reading of Ray Train's errors: the controller-side callback that posts
each failed group's causes to the run's board (`reporter`, so a restart's cause
reaches run.json while the run goes on) and the final error of a fit that ran
out of restarts (`explain`): our own error when a worker raised one, else the
stalled ranks, else each rank's root cause.
"""

from __future__ import annotations

from orchestrator.errors import OrchestratorError, TrainingError, first_line
from orchestrator.job.spec import JobSpec
from orchestrator.track.metadata import restart_cause
from orchestrator.track.records import Kind


def reporter(board):
    """A Ray Train callback, run on the controller, posting why a worker group failed (a FAILURE record)."""
    import ray.train

    class FailureReporter(ray.train.UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict) -> None:
            causes = {rank: one_line(root_cause(error)) for rank, error in worker_exceptions.items()}
            board.post.remote({"kind": Kind.FAILURE, "causes": causes})

    return FailureReporter()


def explain(error: BaseException, job: JobSpec, stalls: list[dict]) -> OrchestratorError:
    """One paragraph for a failed fit: our own error if a worker raised one, else the stalled ranks
    of the last group (STALL records), else the root cause."""
    from ray.train import WorkerGroupError

    if isinstance(error, OrchestratorError):
        return error
    if stalls:
        return TrainingError(f"training failed after {job.failure.max_failures} restart(s) allowed by "
                             f"failure.max_failures: {restart_cause(None, stalls)}")
    if isinstance(error, WorkerGroupError):
        causes = {rank: root_cause(e) for rank, e in sorted(error.worker_failures.items())}
        ours = [c for c in causes.values() if isinstance(c, OrchestratorError)]
        if ours:
            return ours[0]
        detail = "; ".join(f"rank {rank}: {one_line(c)}" for rank, c in causes.items())
        return TrainingError(
            f"training failed after {job.failure.max_failures} restart(s) allowed by "
            f"failure.max_failures: {detail}. Run with -v to see the workers' logs."
        )
    return TrainingError(f"training failed: {one_line(root_cause(error))}. Run with -v to see Ray's logs.")


def root_cause(error: BaseException) -> BaseException:
    """The worker's own exception inside a Ray error (RayTaskError keeps it as `cause`), else `error`."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def one_line(error: BaseException) -> str:
    """'ErrorType: its last line'."""
    return f"{type(error).__name__}: {first_line(error, last=True)}"
