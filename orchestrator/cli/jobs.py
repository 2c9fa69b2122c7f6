"""`run`, `tune` and `validate`: a job file and the options that override it, checked, then trained,
searched or only described."""

from __future__ import annotations

import argparse

from orchestrator import progress
from orchestrator.cli import plan
from orchestrator.job import spec
from orchestrator.track.records import Kind


def register(commands) -> None:
    """Add `run`, `tune` and `validate` to the command line's subcommands."""
    for name, text, folder, logs, command in (
        ("run", "train a job across Ray Train workers", "run", "Ray's own logs and per-step progress", _run),
        ("tune", "search a job's hyperparameters (its search section) on Ray Tune; each trial is a whole run",
         "sweep", "Ray's and Tune's own logs", _tune),
    ):
        sub = commands.add_parser(name, help=text)
        job_arguments(sub)
        sub.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
        sub.add_argument("--fresh", action="store_true", help=f"delete an earlier {folder} of this name first")
        sub.add_argument("-v", "--verbose", action="store_true", help=f"show {logs}")
        sub.set_defaults(command=command)

    validate = commands.add_parser("validate", help="check a job file and its data footers without starting Ray; "
                                                    "leaves no file behind")
    job_arguments(validate)
    validate.set_defaults(command=_validate)


def job_arguments(parser: argparse.ArgumentParser,
                  storage: str = "storage: where run folders go (path or fsspec URL)") -> None:
    """The job file and the options that override its values (`load` applies them)."""
    parser.add_argument("job", help="the job file (YAML)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a job file value, e.g. --set optim.lr=0.01 (repeatable)",
    )
    parser.add_argument("--workers", help="scaling.workers: a count, or MIN,MAX for an elastic run")
    parser.add_argument("--storage", help=storage)
    parser.add_argument("--name", help="name: the run folder's name under storage")


def load(args: argparse.Namespace) -> spec.JobSpec:
    """The job file with the command line's overrides applied, validated. A problem the job file
    alone does not have starts with the option(s) it came from (`_from_options`)."""
    given = _overrides(args)
    try:
        return spec.load(args.job, [override for _, override in given])
    except spec.SpecError as error:
        if not given:
            raise
        raise _from_options(error, args.job, given) from None


def _overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(the option as typed, its `key.path=value` override) for every --set, then --workers, --storage, --name."""
    given = [(f"--set {item!r}", item) for item in args.overrides]
    if args.workers:
        workers = args.workers if "," not in args.workers else f"[{args.workers}]"
        given.append((f"--workers {args.workers!r}", f"scaling.workers={workers}"))
    for key in ("storage", "name"):
        if getattr(args, key):
            given.append((f"--{key} {getattr(args, key)!r}", f"{key}={getattr(args, key)}"))
    return given


def _from_options(error: spec.SpecError, job_file: str, given: list[tuple[str, str]]) -> spec.SpecError:
    """`error` with each problem the job file alone does not have prefixed by the option whose key
    path it concerns, or by every option when it concerns none of theirs (a check across sections)."""
    try:
        spec.load(job_file)
        in_file = set()
    except spec.SpecError as plain:
        in_file = set(plain.problems)
    keys = {option: ".".join(part.strip() for part in override.partition("=")[0].split("."))
            for option, override in given}
    problems = []
    for problem in error.problems:
        if problem in in_file or problem.startswith("--set "):  # spec names a malformed --set itself
            problems.append(problem)
            continue
        path = problem.split(":", 1)[0].split("[", 1)[0]
        near = [option for option, key in keys.items()
                if path == key or path.startswith(key + ".") or key.startswith(path + ".")]
        problems.append(f"{', '.join(near or keys)}: {problem}")
    return spec.SpecError(problems, error.source)


def _raw(args: argparse.Namespace) -> dict:
    """The job file's mapping with the command line's overrides set (validated by `load` first)."""
    return spec.apply_overrides(spec.read(args.job), [override for _, override in _overrides(args)])


def _validate(args: argparse.Namespace) -> int:
    """Check the job and its data's footers and print the plan; leaves no file behind (`plan.generated_copy`)."""
    job = load(args)
    if job.search is not None:  # every job the space can make, checked as `tune` checks it
        from orchestrator.job import trials

        problems = trials.check_space(_raw(args), job.search)
        if problems:
            raise spec.SpecError(problems, args.job)
    with plan.generated_copy(job) as checked:
        plan.print_plan(checked)
    return 0


def _run(args: argparse.Namespace) -> int:
    from orchestrator.driver import launch

    job = load(args)
    if job.search is not None:
        print("this job has a search section: `run` trains the values written in it; `orchestrator tune` searches")
    printer = progress.ProgressPrinter(job, verbose=args.verbose)
    shown: list = []

    def show(summary) -> None:
        print(_describe(summary, job))
        if args.verbose and summary.phases:
            print(f"  time       {progress.format_phases(summary.phases)}")
        print(summary.run_dir, flush=True)
        shown.append(summary)

    def on_record(record: dict) -> None:  # the summary as soon as it is written, not after Ray stops
        if record["kind"] == Kind.SUMMARY:
            show(record["summary"])
        else:
            printer(record)

    summary = launch.run(job, address=args.address, fresh=args.fresh, verbose=args.verbose, on_record=on_record)
    if not shown:  # a run found already complete
        show(summary)
    return 0


def _tune(args: argparse.Namespace) -> int:
    import pathlib

    from orchestrator.driver import sweep
    from orchestrator.results import sweeps

    load(args)  # every problem of the job file and the options, each named by where it came from
    url = sweep.tune(_raw(args), source=args.job, default_name=pathlib.Path(args.job).stem, address=args.address,
                     fresh=args.fresh, verbose=args.verbose, on_event=progress.SweepPrinter())
    print(sweeps.describe(sweeps.open_sweep(url)))
    return 0


def _describe(summary, job: spec.JobSpec) -> str:
    """The summary a finished `run` prints. The wall time and the training throughput are two
    figures: the wall time includes start-up, fitting, validation and checkpoints."""
    rate = f"; training {summary.samples_per_s:,.0f} {'rows' if job.model.trees else 'samples'}/s" \
        if summary.samples_per_s else ""
    done = (f"{summary.steps} boosting rounds" if job.model.trees else
            f"{summary.steps} steps, {summary.epochs_completed} epoch(s), {summary.samples:,} samples")
    lines = [
        f"run {summary.name} {summary.status}: {done} in {summary.wall_s:.1f} s wall "
        f"({summary.world_size} worker(s), {summary.restarts} restart(s)){rate}",
    ]
    metrics = progress.format_metrics("train", summary.train) + progress.format_metrics("val", summary.validation)
    if metrics:
        lines.append(f"  {metrics.strip()}")
    if summary.fit and summary.fit.get("reading"):
        lines.append(f"  fit        {summary.fit['reading']} (train/val gap {summary.fit['gap']:.3g})")
    if summary.best:
        where = (f"round {summary.best['best_step']}" if job.model.trees else
                 f"epoch {summary.best['best_epoch'] + 1} (step {summary.best['best_step']})")
        exported = f" — exported as {summary.model.rsplit('/', 1)[-1]}" if summary.best.get("checkpoint") else ""
        lines.append(f"  best       {summary.best['best_value']:.4g} at {where}{exported}")
    if summary.checkpoint:
        lines.append(f"  checkpoint {summary.checkpoint}")
    if summary.model:
        lines.append(f"  model      {summary.model}")
    return "\n".join(lines)

