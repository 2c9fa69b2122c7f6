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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Sequence

from orchestrator import progress
from orchestrator.errors import DataError, OrchestratorError
from orchestrator.job import spec
from orchestrator.track.records import Kind


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
        prog="orchestrator", description="Train PyTorch models on Parquet data across Ray Train workers, from one job file."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train a job across Ray Train workers")
    _job_arguments(run)
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--fresh", action="store_true", help="delete an earlier run of this name first")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and per-step progress")
    run.set_defaults(command=_run)

    tune = commands.add_parser("tune", help="search a job's hyperparameters (its search section) on Ray Tune; "
                                            "each trial is a whole run")
    _job_arguments(tune)
    tune.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    tune.add_argument("--fresh", action="store_true", help="delete an earlier sweep of this name first")
    tune.add_argument("-v", "--verbose", action="store_true", help="show Ray's and Tune's own logs")
    tune.set_defaults(command=_tune)

    validate = commands.add_parser("validate", help="check a job file and its data footers without starting Ray; "
                                                    "leaves no file behind")
    _job_arguments(validate)
    validate.set_defaults(command=_validate)
    _cluster_commands(commands)
    _local_ray_commands(commands)
    _report_commands(commands)
    return parser


def _local_ray_commands(commands) -> None:
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


def _report_commands(commands) -> None:
    """`runs`, `report`, `compare`, `predict`, `evaluate`: reading run folders back (reports.py, predict.py)."""
    run_help = "a run folder: path or fsspec URL (<storage>/<name>), or a run name under ./runs"
    runs = commands.add_parser("runs", help="list the runs under a storage folder, or a sweep's trials")
    runs.add_argument("storage", nargs="?", default="./runs",
                      help="the jobs' storage, or a sweep folder: path or fsspec URL (default ./runs)")
    runs.set_defaults(command=_runs)
    report = commands.add_parser("report", help="print a run's (or a sweep's) summary and write PNG plots into "
                                                "<run>/report/")
    report.add_argument("run", help=run_help + "; or a sweep folder")
    report.set_defaults(command=_report)
    compare = commands.add_parser("compare", help="two runs' curves on one plot and their final metrics side by side")
    compare.add_argument("run_a", help=run_help)
    compare.add_argument("run_b", help=run_help)
    compare.add_argument("--out", help="where the PNG goes (default ./compare-A-vs-B.png); its path is printed")
    compare.set_defaults(command=_compare)
    for name, text in (("predict", "write one prediction per row of a Parquet dataset"),
                       ("evaluate", "print a run's loss and accuracy or R² on labelled Parquet data")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("run", help=run_help)
        sub.add_argument("--data", required=True, help="Parquet file, folder or glob; any fsspec URL")
        if name == "predict":
            sub.add_argument("--out", required=True, help="the Parquet file to write (path or fsspec URL)")
            sub.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
        sub.add_argument("--checkpoint", help="use this checkpoint of the run (step-… or best-…) instead of model.pt")
        sub.add_argument("--batch-rows", type=int, default=65_536, help="rows per inference batch (default 65536)")
        sub.set_defaults(command=globals()[f"_{name}"])


def _run_url(name: str) -> str:
    """A run folder as given, or ./runs/<name> when only that exists."""
    import os

    from orchestrator import storage

    fallback = os.path.join("runs", name)
    if storage.is_local(name) and not os.path.isdir(name) and os.path.isdir(fallback):
        return fallback
    return name


def _runs(args: argparse.Namespace) -> int:
    from orchestrator.results import reports, sweeps

    if sweeps.is_sweep(_run_url(args.storage)):
        print(sweeps.trials_table(sweeps.open_sweep(_run_url(args.storage))))
        return 0
    runs = reports.find_runs(args.storage)
    print(reports.runs_table(runs) if runs else f"no runs under {args.storage}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from orchestrator.results import reports, sweeps

    if sweeps.is_sweep(_run_url(args.run)):
        sweep = sweeps.open_sweep(_run_url(args.run))
        print(sweeps.describe(sweep))
        for url in sweeps.write_report(sweep):
            print(f"  plot       {url}")
        return 0
    run = reports.open_run(_run_url(args.run))
    print(reports.describe(run))
    for url in reports.write_report(run):
        print(f"  plot       {url}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from orchestrator.results import reports

    a, b = reports.open_run(_run_url(args.run_a)), reports.open_run(_run_url(args.run_b))
    print(reports.compare_table(a, b))
    url = reports.save_png(reports.compare_figure(a, b), args.out or f"compare-{a.name}-vs-{b.name}.png")
    print(f"  plot       {url}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from orchestrator.results import predict

    if not args.overwrite:
        _refuse_existing(args.out)
    rows = predict.predict(_run_url(args.run), args.data, args.out, checkpoint_name=args.checkpoint,
                           batch_rows=args.batch_rows)
    print(f"{rows:,} predictions written to {args.out}")
    return 0


def _refuse_existing(url: str) -> None:
    """A DataError when something is at `url` (on any filesystem), naming it and --overwrite."""
    import pyarrow.fs

    from orchestrator import storage

    fs, path = storage.arrow_filesystem(url)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        raise DataError(f"--out {storage.absolute(url)} already exists; pass --overwrite to replace it, "
                        "or choose another --out")


def _evaluate(args: argparse.Namespace) -> int:
    from orchestrator.results import predict

    metrics = predict.evaluate(_run_url(args.run), args.data, checkpoint_name=args.checkpoint,
                               batch_rows=args.batch_rows)
    shown = "  ".join(f"{name} {value:.4g}" for name, value in metrics.items() if name != "rows")
    print(f"{metrics['rows']:,} rows  {shown}")
    return 0


def _cluster_commands(commands) -> None:
    """`submit`, `status`, `logs`, `stop`: a job on a Ray cluster through its Jobs API (orchestrator/submit.py)."""
    address = "the cluster's Jobs API, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)"
    submit = commands.add_parser("submit", help="run a job on a Ray cluster through its Jobs API and follow it")
    _job_arguments(submit, storage="storage: where run folders go; on a cluster a shared URL (s3://…)")
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
            sub.add_argument("-f", "--follow", action="store_true", help="stream until the job ends; exit with its outcome")


def _submit(args: argparse.Namespace) -> int:
    import json

    from orchestrator.driver import submit

    job = _load(args)  # the whole job is checked here, before anything is uploaded
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


def _job_arguments(parser: argparse.ArgumentParser,
                   storage: str = "storage: where run folders go (path or fsspec URL)") -> None:
    """The job file and the options that override its values (`_load` applies them)."""
    parser.add_argument("job", help="the job file (YAML)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a job file value, e.g. --set optim.lr=0.01 (repeatable)",
    )
    parser.add_argument("--workers", help="scaling.workers: a count, or MIN,MAX for an elastic run")
    parser.add_argument("--storage", help=storage)
    parser.add_argument("--name", help="name: the run folder's name under storage")


def _load(args: argparse.Namespace) -> spec.JobSpec:
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


def _validate(args: argparse.Namespace) -> int:
    """Check the job and its data's footers and print the plan; leaves no file behind (`_generated_copy`)."""
    job = _load(args)
    if job.search is not None:  # every job the space can make, checked as `tune` checks it
        from orchestrator.job import trials

        problems = trials.check_space(_raw(args), job.search)
        if problems:
            raise spec.SpecError(problems, args.job)
    with _generated_copy(job) as checked:
        _print_plan(checked)
    return 0


def _raw(args: argparse.Namespace) -> dict:
    """The job file's mapping with the command line's overrides set (validated by `_load` first)."""
    return spec.apply_overrides(spec.read(args.job), [override for _, override in _overrides(args)])


@contextlib.contextmanager
def _generated_copy(job: spec.JobSpec):
    """`job` itself when it has no data.generate or its data is there. Otherwise, saying so, `job`
    reading an identical copy of what its first run will generate, made in a temporary folder and
    deleted after, so nothing is left where the job points."""
    import dataclasses
    import tempfile

    from orchestrator import storage
    from orchestrator.data import synthetic

    path, generate = storage.absolute(job.data.path), job.data.generate
    if generate is None or _has_data(path):
        yield job
        return
    print(f"data.generate: no data at {path} yet; the first run writes {generate.rows:,} {generate.kind} rows "
          "there. Checking an identical copy in a temporary folder.")
    # A local folder, not memory://: a copy read through pyarrow's PyFileSystem sometimes aborted at exit.
    with tempfile.TemporaryDirectory(prefix="orchestrator-validate-") as folder:
        synthetic.write(generate, folder)
        yield dataclasses.replace(job, data=dataclasses.replace(job.data, path=folder))


def _has_data(url: str) -> bool:
    """Whether Parquet files are at `url`; an unknown protocol or a missing package is a DataError."""
    from orchestrator import storage
    from orchestrator.data import source

    storage.fsspec_filesystem(url)
    try:
        source.discover(url)
    except DataError:
        return False
    return True


def _print_plan(asked: spec.JobSpec) -> None:
    """What `validate` prints for `asked`: its data, each column's plan, the label's nulls, the
    batches per epoch and the run folder."""
    from orchestrator.data import columns, source
    from orchestrator.driver import launch

    prepared = launch.prepare(asked, generate=False)
    index, job = prepared.index, prepared.job
    print(f"job {job.name}: OK")
    print(f"  data        {len(index.files)} file(s), {len(index.row_groups)} row group(s), {index.num_rows:,} rows")
    nulls = dict(index.null_counts)
    seen = source.sample_cardinalities(index)
    print("  columns")
    for plan, line in zip(index.columns, columns.describe_plan(index.columns)):
        count = nulls.get(plan.name)
        notes = [f"{'?' if count is None else f'{count:,}'} null"]
        if plan.name in seen:
            distinct, rows = seen[plan.name]
            notes.append(f">= {distinct:,} distinct in its first {rows:,} rows")
            if not plan.hash_buckets and distinct > plan.max_categories:
                notes.append(f"more than max_categories {plan.max_categories:,}: the rarest are pooled as 'rare'; "
                             f"set data.columns.{plan.name}.hash_buckets to keep them apart")
        print(f"    {line}  [{'; '.join(notes)}]")
    schema = source.schema_names(index)
    left_out = [name for name in schema if name not in index.features and name != index.label]
    for name in left_out:
        why = "data.exclude" if name in asked.data.exclude else "not in data.features"
        print(f"    {name}  excluded ({why})")
    if index.label_nulls:
        print(f"  label       {index.label_nulls:,} row(s) without a label: "
              f"{'skipped in training and counted' if job.data.null_labels == 'drop' else 'refused'}")
    if job.model.trees:
        print(f"  training    {job.model.rounds} {job.model.kind} boosting rounds; each of "
              f"{job.scaling.max_workers} worker(s) reads whole row groups")
    else:
        print(f"  per epoch   {prepared.batches_per_epoch} global batches of {job.train.batch_size}, "
              f"{prepared.dropped_rows} rows dropped")
        warmup = spec.warmup_warning(job, spec.total_steps(job.train, prepared.batches_per_epoch))
        if warmup:
            print(f"  warning     {warmup}")
    print(f"  run folder  {prepared.run_url}")
    search = job.search
    if search:
        trials = search.grid_size if search.algorithm == "grid" else search.trials
        pruning = ", ASHA at epoch ends" if search.scheduler == "asha" else ""
        print(f"  search      {trials} trial(s), {search.algorithm}{pruning}, by {search.metric} "
              f"({'max' if search.maximize else 'min'}); every value the space can give makes a valid job "
              "(`orchestrator tune` runs it; `run` trains the values written above)")
        for key, domain in search.space.items():
            print(f"    {key}  {domain.kind} {list(domain.values)}")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.driver import launch

    job = _load(args)
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

    _load(args)  # every problem of the job file and the options, each named by where it came from
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
