"""What the connected Ray cluster is, and what its autoscaler can make of it.

Owns reading the cluster's shape for the driver's up-front checks
(`preflight.check_resources`, `preflight.check_storage`): the resources of the
alive nodes, how many machines they span, and — when an autoscaler manages
the cluster — the most resources it could ever offer. It only reads; it
never changes the cluster. Call it from a driver connected with `ray.init`.

Where the autoscaler's limits come from, first found wins:

1. the cluster config Ray itself keeps in the GCS (reported by platforms
   such as KubeRay; Ray Train's own resource check reads the same);
2. the autoscaling config file of the head's autoscaler (`ray start --head
   --autoscaling-config=…`, which `ray up` always passes), found among this
   machine's processes — so when the driver runs on the head node, as it
   does under `ray job submit` and `orchestrator submit`;
3. the autoscaler's status in the GCS, which shows that an autoscaler runs
   but not how far it can grow (limits unknown).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

import yaml

# A provider whose "nodes" are all processes on the head's machine: they share its disk.
SAME_MACHINE_PROVIDERS = ("fake_multinode",)


@dataclass(frozen=True)
class AutoscalerLimits:
    """What an autoscaler may add to the cluster.

    `max_resources` is the most of each resource the cluster could hold at
    its largest (None when the autoscaler's config could not be read), and
    `max_per_node` the most of each one node could hold. `adds_nodes` says
    whether it may start worker nodes at all, `new_machines` whether those
    can be other machines than the head's.
    """

    source: str
    max_resources: dict[str, float] | None = None
    max_per_node: dict[str, float] = field(default_factory=dict)
    adds_nodes: bool = True
    new_machines: bool = True


def unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why nothing answers a TCP connection to host:port within `timeout_s` (the OS's reason), or None."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return str(error.strerror or error)
    return None


def alive_nodes() -> list[dict]:
    """The alive nodes that offer resources beyond their own node markers (ray.nodes() entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and _offers_resources(n.get("Resources", {}))]


def _offers_resources(resources: dict) -> bool:
    return any(not key.startswith("node:") and value > 0 for key, value in resources.items())


def machines() -> set[str]:
    """The distinct IP addresses of the alive nodes: more than one means disks are not shared."""
    return {n["NodeManagerAddress"] for n in alive_nodes()}


def job_working_dir() -> str | None:
    """The driver's working directory when Ray unpacked it for a job (each node has its own copy), else None.

    A `local://` working dir is used in place, not unpacked, so it gives None.
    """
    import ray

    uri = ray.get_runtime_context().runtime_env.get("working_dir") or ""
    if not uri or uri.startswith("local://"):
        return None
    try:
        return os.getcwd()
    except FileNotFoundError:
        # Nodes sharing one disk (the fake multi-node provider) re-unpack the same
        # directory, which removes the one this process stands in; the shell's PWD still names it.
        return os.environ.get("PWD")


def largest_node() -> dict[str, float]:
    """The most of each resource any one alive node offers."""
    largest: dict[str, float] = {}
    for node in alive_nodes():
        for key, value in node.get("Resources", {}).items():
            largest[key] = max(largest.get(key, 0.0), value)
    return largest


def autoscaler_limits() -> AutoscalerLimits | None:
    """The autoscaler's limits (see the module docstring), or None when no autoscaler manages the cluster."""
    import ray

    gcs_address = ray.get_runtime_context().gcs_address
    return _from_gcs_cluster_config() or _from_local_monitor(gcs_address) or _from_autoscaler_status()


def _from_gcs_cluster_config() -> AutoscalerLimits | None:
    from ray._private import state

    try:
        config = state.state.get_cluster_config()
    except Exception:  # best effort: an older GCS without the key behaves like no config
        return None
    if config is None or not config.node_group_configs:
        return None
    largest = {}
    for group in config.node_group_configs:
        if group.max_count != 0:
            for key, value in group.resources.items():
                largest[key] = max(largest.get(key, 0.0), float(value))
    maximum = state.state.get_max_resources_from_cluster_config() or {}
    adds = any(group.max_count != 0 for group in config.node_group_configs)
    return AutoscalerLimits(
        "the cluster config in Ray's GCS", {k: float(v) for k, v in maximum.items()}, largest, adds, adds
    )


def _from_local_monitor(gcs_address: str) -> AutoscalerLimits | None:
    """The config file named by the autoscaler process of this cluster, if it runs on this machine."""
    path = _monitor_config_path(gcs_address)
    if path is None:
        return None
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return AutoscalerLimits(f"the autoscaler (its config {path} could not be read)")
    return limits_from_config(config, source=f"the autoscaler config {path}")


def _monitor_config_path(gcs_address: str) -> str | None:
    """`--autoscaling-config` of the autoscaler monitor serving `gcs_address`, from /proc (Linux)."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith(("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")) for a in args):
            continue
        options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if options.get("gcs-address") == gcs_address and options.get("autoscaling-config"):
            return os.path.expanduser(options["autoscaling-config"])
    return None


def limits_from_config(config: dict, source: str = "the cluster config") -> AutoscalerLimits:
    """The limits a Ray cluster-launcher config allows: head plus the largest nodes up to `max_workers`.

    A worker node type with no `resources` listed (left to auto-detection
    from the instance type) makes the maximum unknown.
    """
    types = config.get("available_node_types") or {}
    head = types.get(config.get("head_node_type"), {})
    provider = (config.get("provider") or {}).get("type")
    workers = [t for name, t in types.items() if name != config.get("head_node_type") and t.get("max_workers", 0) > 0]
    if config.get("max_workers") == 0:
        workers = []
    new_machines = provider not in SAME_MACHINE_PROVIDERS and bool(workers)
    if any(not t.get("resources") for t in workers):
        return AutoscalerLimits(source, None, {}, bool(workers), new_machines)
    budget = config.get("max_workers", sum(t["max_workers"] for t in workers))
    keys = {k for t in workers + [head] for k in (t.get("resources") or {})}
    maximum, largest = {}, {}
    for key in keys:
        # The global max_workers caps the node count, so the most of a resource
        # comes from filling that budget with the node types richest in it.
        per_node = sorted(
            (float(t["resources"].get(key, 0)) for t in workers for _ in range(t["max_workers"])), reverse=True
        )
        head_amount = float((head.get("resources") or {}).get(key, 0))
        maximum[key] = head_amount + sum(per_node[:budget])
        largest[key] = max([head_amount] + per_node[:1])
    return AutoscalerLimits(source, maximum, largest, bool(workers), new_machines)


def _from_autoscaler_status() -> AutoscalerLimits | None:
    """An autoscaler with node types of its own (not the read-only one of a fixed cluster) shows in its status."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    try:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw).get("autoscaler_report") or {} if raw else {}
    except Exception:  # best effort: a status we cannot read says nothing
        return None
    types = set(report.get("active_nodes") or {}) | set((report.get("node_type_mapping") or {}).values())
    if any(not t.startswith("node_") for t in types):
        return AutoscalerLimits("the autoscaler's status (its limits are not published)")
    return None


def free_port() -> int:
    """A TCP port on this machine that nothing listens on right now (for a service Ray starts here)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
