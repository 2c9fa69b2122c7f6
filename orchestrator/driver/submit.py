"""Running a job on a Ray cluster through Ray's Jobs API: submit, follow, status, logs, stop.

Owns talking to a cluster's Jobs API (the dashboard, `http://HOST:8265`)
with Ray's `JobSubmissionClient`: which address and token to use, what the
job's runtime environment uploads (the current directory, without run
folders, data and VCS files), the entrypoint (`python -m orchestrator run
…`, which joins the cluster through the RAY_ADDRESS Ray gives every job),
and turning the job's end into an exit code and a one-paragraph cause.

Every wait is bounded: reaching the API (ORCHESTRATOR_SUBMIT_CONNECT_TIMEOUT_S)
and a job left PENDING (ORCHESTRATOR_SUBMIT_PENDING_TIMEOUT_S, then it is
stopped). The token is read where Ray reads it (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and is never printed.
What runs on the cluster, and whether it fits there, is `launch`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
import urllib.parse
from typing import Callable, Iterator, Sequence

from orchestrator import settings, storage
from orchestrator.driver import cluster
from orchestrator.errors import LaunchError, first_line
from orchestrator.job import spec

# Never uploaded with the working directory (.gitignore patterns relative to it, no
# trailing '/': Ray matches a directory's own path without one). Run folders and
# data belong in storage, not in every job's package.
EXCLUDES = (
    ".git",
    "/runs",
    "/data",
    "/benchmarks/.work",
    "/build",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".benchmarks",
    ".venv",
)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_POLL_S = 0.5
_AUTH_HELP = (
    "Token authentication is on for that cluster: give this machine the cluster's token in "
    "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (copy it "
    "from the head node's ~/.ray/auth_token; never put it on a command line)."
)


def address_of(address: str | None) -> str | None:
    """The Jobs API address to use: `address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (as Ray does)."""
    return address or settings.RAY_API_SERVER_ADDRESS.get() or settings.RAY_ADDRESS.get() or None


def connect(address: str | None):
    """A JobSubmissionClient for the cluster at `address`, carrying its token; LaunchError if unreachable.

    An explicit `address` wins over the environment (Ray's own client lets
    RAY_ADDRESS override it, which would silently talk to another cluster).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address_of(address)
    _check_reachable(address)
    logging.getLogger("ray").setLevel(logging.WARNING)  # not Ray's INFO lines about packaging the upload
    headers = _auth_headers()
    try:
        with _without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        sent = "refused the token this machine sent" if headers else "wants a token and this machine has none"
        raise LaunchError(f"The Ray cluster at {address} {sent}. {_AUTH_HELP}") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise LaunchError(
            f"Cannot reach the Ray Jobs API at {address or 'the local default'}: {first_line(error)}. "
            "Pass --address http://HOST:8265 (the head's dashboard; tunnel it with "
            "`ssh -L 8265:127.0.0.1:8265 HEAD`), or set RAY_API_SERVER_ADDRESS."
        ) from None


def _check_reachable(address: str | None) -> None:
    """Fail within the connect timeout, naming the address, when nothing listens there."""
    if not address or not address.startswith(("http://", "https://")):
        return  # a GCS address or 'auto': Ray looks the dashboard up itself
    url = urllib.parse.urlsplit(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    why = cluster.unreachable(url.hostname, port, settings.SUBMIT_CONNECT_TIMEOUT_S.get_float())
    if why:
        raise LaunchError(
            f"No Ray cluster answers at {address} ({why}). Start one with "
            "`ray start --head --dashboard-host 127.0.0.1`, check the host and the dashboard port "
            "(8265 by default), or tunnel a remote head with `ssh -L 8265:127.0.0.1:8265 HEAD`."
        )


def _auth_headers() -> dict[str, str]:
    """The Authorization header from Ray's usual token places, whatever RAY_AUTH_MODE says here."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        return dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    except Exception:  # best effort: no token, or a Ray without token auth; the server will say
        return {}


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def entrypoint(job_path: str, overrides: Sequence[str], run_options: Sequence[str] = ()) -> str:
    """The shell command the cluster runs: `python -m orchestrator run JOB --set …`."""
    args = ["python", "-m", "orchestrator", "run", job_path, *run_options]
    for override in overrides:
        args += ["--set", override]
    return shlex.join(args)


def runtime_env(working_dir: str, extra: dict | None = None) -> dict:
    """The job's runtime env: `working_dir` uploaded without EXCLUDES, and the ORCHESTRATOR_* settings set here."""
    forwarded = {
        s.name: s.get()
        for s in vars(settings).values()
        if isinstance(s, settings.Setting) and s.name.startswith("ORCHESTRATOR_") and s.get() != s.default
    }
    env = {"working_dir": working_dir, "excludes": list(EXCLUDES), "env_vars": forwarded}
    for key, value in (extra or {}).items():
        if key in ("excludes", "env_vars"):
            value = (env[key] + list(value)) if key == "excludes" else {**env[key], **value}
        env[key] = value
    return env


def submit(
    job_path: str,
    job: spec.JobSpec,
    *,
    address: str | None,
    overrides: Sequence[str] = (),
    run_options: Sequence[str] = (),
    extra_runtime_env: dict | None = None,
    wait: bool = True,
    out: Callable[[str], None] = lambda text: print(text, end="", flush=True),
) -> int:
    """Submit the job file `job_path` to the cluster and, with `wait`, follow it to its end.

    `job` is that file already loaded with `overrides` and `run_options`
    (so a bad job fails before any upload); the cluster runs
    `orchestrator run job_path [run_options] --set override…`. The current
    directory is the job's working directory, so `job_path` must lie inside
    it. Returns the exit code: 0 when the job succeeded, else the run's own
    (2 for a bad job, 1 for failed training).
    """
    working_dir = os.getcwd()
    relative = os.path.relpath(os.path.abspath(job_path), working_dir)
    if relative.startswith(".."):
        raise LaunchError(
            f"The job file {job_path} is outside the current directory {working_dir}, which is what "
            "the job uploads; run `orchestrator submit` from a directory that contains it."
        )
    client = connect(address)
    if storage.is_local(job.storage) and not os.path.isabs(os.path.expanduser(job.storage)):
        print(
            f"warning: storage {job.storage!r} is relative: on the cluster it lands inside the job's "
            "temporary working directory. Pass --storage with a shared URL (s3://…, gs://…) or a path "
            "every node mounts.",
            file=sys.stderr,
        )
    job_id = _call(client.submit_job, address,
                   entrypoint=entrypoint(relative, overrides, run_options),
                   runtime_env=runtime_env(working_dir, extra_runtime_env),
                   metadata={"orchestrator_job": job.name})
    print(f"submitted {job.name} as {job_id} to {address_of(address) or 'the local cluster'}", file=sys.stderr)
    if not wait:
        print(job_id)
        return 0
    return follow(client, job_id, address, out=out)


def follow(client, job_id: str, address: str | None, out: Callable[[str], None]) -> int:
    """Stream the job's logs until it ends; its exit code, with its cause printed when it failed."""
    _wait_while_pending(client, job_id, address)
    logs: list[str] = []
    try:
        asyncio.run(_tail(client, job_id, lambda text: (logs.append(text), out(text))))
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running. Stop it with "
              f"`orchestrator stop {job_id}{_address_flag(address)}`.", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    while str(info.status) not in TERMINAL:  # the log stream can close a moment before the status moves
        time.sleep(_POLL_S)
        info = client.get_job_info(job_id)
    if str(info.status) == "SUCCEEDED":
        return 0
    cause = failure_cause("".join(logs) or _call(client.get_job_logs, address, job_id), info.message)
    code = info.driver_exit_code if info.driver_exit_code and info.driver_exit_code > 0 else 1
    print(f"error: job {job_id} {info.status}: {cause}", file=sys.stderr)
    return code


async def _tail(client, job_id: str, out: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out(chunk)


def _wait_while_pending(client, job_id: str, address: str | None) -> None:
    """Wait for the job to leave PENDING; past the timeout, stop it and say why it did not start."""
    limit = settings.SUBMIT_PENDING_TIMEOUT_S.get_float()
    deadline = time.monotonic() + limit
    while True:
        info = _call(client.get_job_info, address, job_id)
        if str(info.status) != "PENDING":
            return
        if time.monotonic() > deadline:
            _call(client.stop_job, address, job_id)
            raise LaunchError(
                f"Job {job_id} was still PENDING after {limit:g} s ({settings.SUBMIT_PENDING_TIMEOUT_S.name}), "
                f"so it was told to stop. Ray says: {info.message or 'nothing'} A job stays PENDING while its "
                "runtime env is installed and while no node has room for its driver; "
                f"`orchestrator logs {job_id}{_address_flag(address)}` and `ray status` on the head show which. "
                "(Ray carries out the stop once the driver is placed, and fails a driver it can never place "
                "after RAY_JOB_START_TIMEOUT_SECONDS, 900 s by default.)"
            )
        time.sleep(_POLL_S)


def failure_cause(logs: str, message: str | None) -> str:
    """The run's own `error: …` paragraph from the logs, else Ray's message about the job."""
    lines = logs.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if starts:
        return "\n".join(lines[starts[-1]:][:40])[len("error: "):]
    return (message or "no cause recorded").strip()[:2000]


def status(job_id: str, address: str | None) -> str:
    """One paragraph on the job: its status, Ray's message, its entrypoint and times."""
    info = _call(connect(address).get_job_info, address, job_id)
    lines = [f"{job_id}: {info.status}"]
    if info.message:
        lines.append(f"  {first_line(info.message)}")
    lines.append(f"  entrypoint  {info.entrypoint}")
    if info.start_time:
        lines.append(f"  started     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.start_time / 1000))}")
    if info.end_time:
        lines.append(f"  ended       {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.end_time / 1000))}")
    return "\n".join(lines)


def logs(job_id: str, address: str | None, *, follow_logs: bool = False,
         out: Callable[[str], None] = lambda text: print(text, end="", flush=True)) -> int:
    """Print the job's logs so far, or with `follow_logs` stream them to its end (then its exit code)."""
    client = connect(address)
    if follow_logs:
        return follow(client, job_id, address, out=out)
    out(_call(client.get_job_logs, address, job_id))
    return 0


def stop(job_id: str, address: str | None) -> str:
    """Ask the cluster to stop the job; says whether it was still running."""
    client = connect(address)
    if _call(client.stop_job, address, job_id):
        return f"stop requested for {job_id}"
    return f"{job_id} had already ended ({_call(client.get_job_info, address, job_id).status})"


def _call(method, address: str | None, *args, **kwargs):
    """A Jobs API call with Ray's errors turned into one-paragraph LaunchErrors."""
    from ray.exceptions import AuthenticationError

    try:
        return method(*args, **kwargs)
    except AuthenticationError:
        raise LaunchError(f"The Ray cluster at {address_of(address)} refused this client's token. {_AUTH_HELP}") from None
    except RuntimeError as error:
        text = str(error)
        if "404" in text or "does not exist" in text:
            job = args[0] if args else kwargs.get("job_id", "")
            raise LaunchError(f"No job {job} on the Ray cluster at {address_of(address)}: {first_line(error)}") from None
        raise LaunchError(f"The Ray Jobs API at {address_of(address)} failed: {first_line(error)}") from None


def _address_flag(address: str | None) -> str:
    resolved = address_of(address)
    return f" --address {resolved}" if resolved else ""
