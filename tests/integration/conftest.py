"""One local Ray cluster shared by every integration test (Ray takes seconds to start)."""

from __future__ import annotations

import os

import pytest

from orchestrator.driver.cluster import free_port
from tests.conftest import REPO


@pytest.fixture(scope="session", autouse=True)
def ray_cluster():
    """A 2-CPU local Ray on OS-chosen free ports (with its dashboard), named in RAY_ADDRESS for Ray Train's
    own actors."""
    import ray

    previous = os.environ.get("RAY_ADDRESS")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        include_dashboard=True,  # Ray's state API: Ray Train frees a stopped sweep trial's workers through it
        dashboard_port=free_port(),
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous
