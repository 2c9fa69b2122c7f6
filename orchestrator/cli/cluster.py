"""`submit`, `status`, `logs`, `stop` (a job on a Ray cluster through its Jobs API) and `up`, `down`
(a warm local Ray that later runs join)."""

from __future__ import annotations

import argparse
import os

from orchestrator.cli.jobs import job_arguments, load
from orchestrator.job import spec


def register(commands) -> None:
    """`submit`, `status`, `logs`, `stop`: a job on a Ray cluster through its Jobs API (driver/submit.py)."""
    address = "the cluster's Jobs API, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)"
    submit = commands.add_parser("submit", help="run a job on a Ray cluster through its Jobs API and follow it")
    job_arguments(submit, storage="storage: where run folders go; on a cluster a shared URL (s3://…)")
    submit.add_argument("--address", help=address)
    submit.add_argument("--fresh", action="store_true", help="delete an earlier run of this name first")
    submit.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and per-step progress")
    submit.add_argument("--runtime-env-json", metavar="JSON",
                        help='more runtime env for the job, e.g. \'{"pip": ["s3fs"]}\' (merged with the upload)')
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return without following it")
    submit.set_defaults(command=_submit)
    for name, text in (("status", "show a submitted job's status"), ("logs", "print a submitted job's logs"),
                       ("stop", "stop a submitted job")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job_id", help="the submission id `submit` printed (raysubmit_…)")
        sub.add_argument("--address", help=address)
        sub.set_defaults(command=globals()[f"_job_{name}"])
        if name == "logs":
            sub.add_argument("-f", "--follow", action="store_true",
                             help="stream until the job ends; exit with its outcome")


def _submit(args: argparse.Namespace) -> int:
    import json

    from orchestrator.driver import submit

    job = load(args)  # the whole job is checked here, before anything is uploaded
    options = [f"--{key}={getattr(args, key)}" for key in ("workers", "storage", "name") if getattr(args, key)]
    options += ["--fresh"] * args.fresh + ["--verbose"] * args.verbose
    try:
        extra = json.loads(args.runtime_env_json) if args.runtime_env_json else None
    except json.JSONDecodeError as error:
        raise spec.SpecError(f"--runtime-env-json: not valid JSON ({error})") from None
    return submit.submit(args.job, job, address=args.address, overrides=args.overrides, run_options=options,
                         extra_runtime_env=extra, wait=not args.no_wait)


def _job_status(args: argparse.Namespace) -> int:
    from orchestrator.driver import submit

    print(submit.status(args.job_id, args.address))
    return 0


def _job_logs(args: argparse.Namespace) -> int:
    from orchestrator.driver import submit

    return submit.logs(args.job_id, args.address, follow_logs=args.follow)


def _job_stop(args: argparse.Namespace) -> int:
    from orchestrator.driver import submit

    print(submit.stop(args.job_id, args.address))
    return 0


def register_local_ray(commands) -> None:
    """`up`, `down`: a warm local Ray that later runs join (driver/local_ray.py)."""
    up = commands.add_parser("up", help="start a local Ray in the background; later run and tune join it "
                                        "(no --address, no RAY_ADDRESS) and skip starting one")
    up.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs it offers (default: all of this machine's)")
    up.set_defaults(command=_up)
    down = commands.add_parser("down", help="stop the local Ray that `up` started (nothing else)")
    down.set_defaults(command=_down)


def _up(args: argparse.Namespace) -> int:
    from orchestrator.driver import local_ray

    print(f"starting a local Ray with {args.cpus} CPU(s) in the background …", flush=True)
    local = local_ray.start(args.cpus)
    print(f"local Ray up at {local.gcs_address} (dashboard {local.dashboard_url}); `orchestrator run` and "
          "`tune` join it; `orchestrator down` stops it")
    return 0


def _down(args: argparse.Namespace) -> int:
    from orchestrator.driver import local_ray

    local = local_ray.stop()
    print("no local Ray started by `orchestrator up` is running" if local is None else
          f"stopped the local Ray at {local.gcs_address}")
    return 0

