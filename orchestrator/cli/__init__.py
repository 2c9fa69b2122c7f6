"""The `orchestrator` command: argument parsing and human-facing output only.

    orchestrator run JOB.yaml [--workers N] [--storage URL] [--name NAME]
                              [--set key.path=value]... [--address ADDR] [--fresh] [-v]
    orchestrator validate JOB.yaml [--workers N] [--storage URL] [--name NAME] [--set key.path=value]...
    orchestrator tune JOB.yaml [the options of run]      (a sweep over the job's search section)
    orchestrator submit JOB.yaml --address http://HOST:PORT [...]   (and status|logs|stop JOB_ID)
    orchestrator runs [STORAGE | SWEEP]
    orchestrator report RUN | SWEEP
    orchestrator compare RUN_A RUN_B [--out PNG]
    orchestrator predict RUN --data URL --out URL [--overwrite]
    orchestrator evaluate RUN --data URL

A bare `orchestrator` prints the help and exits 2. A user's mistake (an
OrchestratorError) prints as one paragraph without a traceback and exits with
its code (2 for bad input); a job problem that an option brings starts with
that option. Anything else keeps its traceback: that is a bug to report.

The commands live by what they work on: `jobs` (run, tune, validate), `plan` (what
validate prints), `results` (runs, report, compare, predict, evaluate) and
`cluster` (submit, status, logs, stop; up, down).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from orchestrator.cli import cluster, jobs, results
from orchestrator.errors import OrchestratorError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `orchestrator`: the list of commands, not only "arguments are required"
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except OrchestratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Train PyTorch models on Parquet data across Ray Train workers, from one job file.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    jobs.register(commands)
    cluster.register(commands)
    cluster.register_local_ray(commands)
    results.register(commands)
    return parser

