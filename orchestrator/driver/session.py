"""Which Ray this driver uses: the cluster it is told to join, the local one `orchestrator up` started, or
an embedded one it starts itself.

Owns `connect`, the one place a driver calls `ray.init`, and the check that an address answers before
Ray's own minutes of retries.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from orchestrator import settings
from orchestrator.errors import LaunchError


def connect(address: str | None, verbose: bool, announce: Callable[..., None], dashboard: bool = False) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, else the local Ray `orchestrator up` started
    (driver.local_ray), else start an embedded one (with Ray's dashboard, and so its state API, when
    `dashboard`); True if started here."""
    from orchestrator.driver import cluster, local_ray

    # Ray Train's controller collects reports and notices dead workers at this
    # interval (Ray's default is 2 s); the driver's value reaches the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", settings.CONTROLLER_POLL_INTERVAL_S.get())

    address = address or settings.RAY_ADDRESS.get() or None
    warm = None if address else local_ray.running()
    if warm is not None:
        local_ray.prepare_to_join(warm)  # before Ray is imported where it can be
    import ray

    quiet = logging.INFO if verbose else logging.ERROR
    if ray.is_initialized():
        return False
    if address:
        _require_reachable(address)
        announce(f"joining the Ray cluster at {address} …", "ray")
        ray.init(address=address, log_to_driver=verbose, logging_level=quiet)
        return False
    # Workers of a local cluster import user model modules (jobs/…) from here.
    python_path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    if warm is not None:
        announce(f"joining the local Ray started by `orchestrator up` at {warm.gcs_address} …", "ray")
        ray.init(address=warm.gcs_address, _node_ip_address=local_ray.NODE_IP, log_to_driver=verbose,
                 logging_level=quiet, runtime_env={"env_vars": {"PYTHONPATH": python_path}})
        return False
    announce(f"starting a local Ray with {os.cpu_count()} CPU(s) …", "ray")
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=dashboard,
        **({"dashboard_port": cluster.free_port()} if dashboard else {}),
        log_to_driver=verbose,
        logging_level=quiet,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    # Ray Train's own actors find this cluster, not another one on the machine.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return True


def _require_reachable(address: str) -> None:
    """LaunchError at once when nothing listens at a host:port address (Ray itself retries for minutes)."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local": Ray resolves those itself
    from orchestrator.driver import cluster

    why = cluster.unreachable(host, int(port), settings.CONNECT_TIMEOUT_S.get_float())
    if why:
        where = "RAY_ADDRESS" if address == settings.RAY_ADDRESS.get() else "--address"
        raise LaunchError(
            f"no Ray cluster answers at {address} (from {where}): {why}. Start the cluster, "
            "fix the address, or unset RAY_ADDRESS to train on an embedded local Ray."
        )
