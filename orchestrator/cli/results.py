"""`runs`, `report`, `compare`, `predict` and `evaluate`: run folders read back (results/)."""

from __future__ import annotations

import argparse

from orchestrator.errors import DataError


def register(commands) -> None:
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

