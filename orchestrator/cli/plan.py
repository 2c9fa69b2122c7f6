"""What `validate` prints: the plan of a job over its data's footers, without training; a job whose
data is still to be generated is checked on a temporary copy."""

from __future__ import annotations

import contextlib

from orchestrator.errors import DataError
from orchestrator.job import spec


@contextlib.contextmanager
def generated_copy(job: spec.JobSpec):
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


def print_plan(asked: spec.JobSpec) -> None:
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

