"""Refusing up front, before any worker starts, a job this cluster can never run.

Owns the driver's checks against the connected cluster: workers it can never
place (`check_resources`), storage or data paths that workers on other nodes
would not see (`check_storage`), and tree jobs their library or their workers'
memory cannot take (`check_trees`, `check_tree_memory`). Each refusal is one
error naming the key and what is allowed; none changes the cluster.
"""

from __future__ import annotations

from orchestrator import settings, storage
from orchestrator.data import plan
from orchestrator.data.index import DatasetIndex
from orchestrator.errors import DataError, LaunchError, SpecError
from orchestrator.job.spec import JobSpec


def check_resources(job: JobSpec) -> None:
    """Refuse up front a worker group the cluster can never place (no silent wait).

    What the cluster lacks now is fine when its autoscaler can add it; refused
    is what even the autoscaler's largest cluster (or, without one, the
    cluster as it is) cannot hold, in total or on any one node.
    """
    import ray

    from orchestrator.driver import cluster

    workers, scaling = job.scaling.min_workers, job.scaling
    need = {"CPU": workers * scaling.cpus_per_worker, **({"GPU": float(workers)} if scaling.use_gpu else {})}
    per_worker = {"CPU": scaling.cpus_per_worker, **({"GPU": 1.0} if scaling.use_gpu else {})}
    total, largest = ray.cluster_resources(), cluster.largest_node()
    if all(need[k] <= total.get(k, 0) for k in need) and all(per_worker[k] <= largest.get(k, 0) for k in need):
        return
    limits = cluster.autoscaler_limits()
    if limits is not None and limits.max_resources is None:
        return  # an autoscaler whose limits we cannot read: Ray Train's placement timeout decides
    most = dict(total)
    if limits is not None:
        most = {k: max(total.get(k, 0), limits.max_resources.get(k, 0)) for k in set(total) | set(need)}
        largest = {k: max(largest.get(k, 0), limits.max_per_node.get(k, 0)) for k in set(largest) | set(need)}
    what = {"CPU": f"scaling.workers {workers} × scaling.cpus_per_worker {scaling.cpus_per_worker:g}",
            "GPU": "scaling.use_gpu, one per worker"}
    has = "can grow to at most" if limits is not None else "has"
    problems = [
        f"{need[k]:g} {k}s ({what[k]}) but the cluster {has} {most.get(k, 0):g}"
        for k in need if need[k] > most.get(k, 0)
    ] + [
        f"{per_worker[k]:g} {k}s on one node for each worker but its largest node offers {largest.get(k, 0):g}"
        for k in need if per_worker[k] > largest.get(k, 0)
    ]
    if problems:
        limit = f" (limits from {limits.source})" if limits is not None else ""
        raise LaunchError(
            "This job cannot be placed: it needs " + "; and ".join(problems) + f"{limit}. Lower "
            "scaling.workers or scaling.cpus_per_worker (fractions are allowed), or run on a larger cluster."
        )


def check_storage(job: JobSpec) -> None:
    """Refuse paths that workers on other nodes would not see, before any worker starts.

    Every worker reads `data.path` and writes checkpoints into `storage` on
    its own node. A plain path works on one machine; on a cluster that spans,
    or whose autoscaler can add, other machines it needs a shared URL, or
    ORCHESTRATOR_ALLOW_LOCAL_STORAGE=1 to declare it an NFS mount. A path
    inside the job's working directory is never shared: each node unpacks
    its own copy of that directory.
    """
    from orchestrator.driver import cluster

    paths = {"storage": job.storage, "data.path": job.data.path}
    if isinstance(job.data.validation, str):
        paths["data.validation"] = job.data.validation
    local = {key: path for key, path in paths.items() if storage.is_local(path)}
    if not local:
        return
    machines, nodes, limits = cluster.machines(), cluster.alive_nodes(), cluster.autoscaler_limits()
    several_nodes = len(nodes) > 1 or (limits is not None and limits.adds_nodes)
    several_machines = len(machines) > 1 or (limits is not None and limits.new_machines)
    job_dir = cluster.job_working_dir() if several_nodes else None
    in_job_dir = [key for key, path in local.items() if job_dir and (path + "/").startswith(job_dir.rstrip("/") + "/")]
    if in_job_dir:
        raise LaunchError(
            f"{', '.join(f'{key} {local[key]!r}' for key in in_job_dir)}: inside the job's working directory, "
            "of which every node of this cluster unpacks its own copy, so workers on other nodes would not "
            "see it. Point it at shared storage (an s3:// or gs:// URL, or an absolute path every node mounts), "
            "e.g. `--storage s3://bucket/runs` or `--set data.path=s3://bucket/data/*.parquet`."
        )
    if not several_machines or settings.ALLOW_LOCAL_STORAGE.get() == "1":
        return
    why = (f"its nodes run on {len(machines)} machines" if len(machines) > 1
           else f"its autoscaler can add nodes on other machines ({limits.source})")
    raise LaunchError(
        f"{', '.join(f'{key} {path!r}' for key, path in local.items())}: a path on one machine, but this Ray "
        f"cluster's nodes need not share a disk ({why}), and each worker reads its data and writes its "
        "checkpoints on its own node. Use storage every node shares: an s3:// or gs:// URL "
        "(`--storage s3://bucket/runs`; `pip install -e .[s3]` on the nodes), or a path on an NFS mount "
        f"present on every node, declared with {settings.ALLOW_LOCAL_STORAGE.name}=1."
    )


def check_trees(job: JobSpec, index: DatasetIndex) -> None:
    """Refuse a tree job its library cannot run: options it does not know, or more workers than row groups."""
    from orchestrator.train import boosters

    problems = boosters.library(job.model.kind).check_options(job.model.options, job.loss.name)
    if problems:
        raise SpecError(problems)
    groups, workers = len(index.row_groups), job.scaling.max_workers
    if workers > groups:
        raise DataError(f"{index.url} has {groups} row group(s), fewer than scaling.workers ({workers}): each worker "
                        f"of a {job.model.kind} model trains on whole row groups. Use at most {groups} worker(s), "
                        "or write the data with more, smaller row groups.")


def check_tree_memory(job: JobSpec, index: DatasetIndex, validation_index: DatasetIndex | None) -> None:
    """Refuse, before any worker starts, a tree job whose matrices cannot fit in its workers' memory
    (data.matrix.memory_problem): the budget is Ray's `memory` resource, shared evenly by the workers."""
    import ray

    from orchestrator.data import matrix
    from orchestrator.train.boosting import PROBE_ROWS

    holdout = job.data.validation if isinstance(job.data.validation, float) else 0.0
    validation_rows = (validation_index.num_rows if validation_index
                       else sum(plan.holdout_count(rg.num_rows, holdout) for rg in index.row_groups))
    largest = max((node.get("memory", 0.0) for node in _node_resources()), default=0.0)
    problem = matrix.memory_problem(index, holdout, job.scaling.max_workers, validation_rows,
                                    min(PROBE_ROWS, index.num_rows), ray.cluster_resources().get("memory", 0.0),
                                    largest)
    if problem:
        raise LaunchError(f"{job.model.kind}: {problem}; or select fewer columns (data.features) or hold out "
                          "fewer validation rows.")


def _node_resources() -> list[dict]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
