"""The cluster configs pass Ray's own schema; what they allow; what a submitted job uploads (no Ray started)."""

from __future__ import annotations

import copy
import zipfile

import pytest
import yaml

from orchestrator import settings
from orchestrator.driver import cluster, submit
from tests.conftest import REPO

pytest.importorskip("jsonschema")  # Ray's validator needs it (it comes with ray[default])


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_configs_pass_rays_own_schema(name):
    from ray.autoscaler._private.util import validate_config

    validate_config(_config(name))


def test_cluster_yaml_still_validates_after_ray_up_fills_in_the_aws_defaults():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_config("cluster.yaml")))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu-worker"]["max_workers"] == 2


def test_cluster_yaml_keeps_the_dashboard_on_localhost_and_carries_the_token():
    config = _config("cluster.yaml")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_the_aws_cluster_can_grow_across_machines_up_to_its_node_types():
    limits = cluster.limits_from_config(_config("cluster.yaml"))
    assert limits.max_resources == {"CPU": 80.0, "GPU": 2.0}  # 8 CPU nodes + 2 GPU nodes, 8 CPUs each
    assert limits.max_per_node["GPU"] == 1.0
    assert limits.adds_nodes and limits.new_machines


def test_the_local_autoscaling_cluster_grows_to_two_one_cpu_nodes_on_this_machine():
    limits = cluster.limits_from_config(_config("cluster-local.yaml"))
    assert limits.max_resources["CPU"] == 2.0 and limits.max_per_node["CPU"] == 1.0
    assert limits.adds_nodes and not limits.new_machines


def test_the_global_max_workers_caps_the_nodes_counted():
    config = _config("cluster.yaml")
    config["max_workers"] = 3
    assert cluster.limits_from_config(config).max_resources == {"CPU": 24.0, "GPU": 2.0}


def test_worker_types_without_listed_resources_leave_the_limits_unknown():
    config = _config("cluster.yaml")
    config["available_node_types"]["cpu-worker"]["resources"] = {}
    limits = cluster.limits_from_config(config)
    assert limits.max_resources is None and limits.new_machines


def test_a_submitted_job_uploads_the_project_without_runs_data_or_git(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "project"
    for path in ["jobs/a.yaml", "orchestrator/x.py", "runs/a/model.pt", "data/q/part-0.parquet",
                 ".git/HEAD", "benchmarks/.work/big.bin", "benchmarks/bench.py", "pkg/__pycache__/m.pyc"]:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text("x")
    target = tmp_path / "package.zip"
    create_package(str(project), target, include_gitignore=True, excludes=submit.runtime_env(str(project))["excludes"])
    names = {n.rstrip("/") for n in zipfile.ZipFile(target).namelist()}
    assert {"jobs/a.yaml", "orchestrator/x.py", "benchmarks/bench.py"} <= names
    assert not [n for n in names if n.startswith(("runs", "data", ".git", "benchmarks/.work")) or "__pycache__" in n]


def test_the_entrypoint_runs_the_job_with_its_overrides_quoted_for_the_shell():
    command = submit.entrypoint("jobs/q.yaml", ["data.path=/d/*.parquet"], ["--workers=1,2"])
    assert command == "python -m orchestrator run jobs/q.yaml --workers=1,2 --set 'data.path=/d/*.parquet'"


def test_orchestrator_settings_set_here_travel_with_the_job(monkeypatch):
    monkeypatch.setenv(settings.ALLOW_LOCAL_STORAGE.name, "1")
    env = submit.runtime_env("/p", {"env_vars": {"A": "b"}, "pip": ["s3fs"]})
    assert env["env_vars"][settings.ALLOW_LOCAL_STORAGE.name] == "1" and env["env_vars"]["A"] == "b"
    assert env["pip"] == ["s3fs"] and env["working_dir"] == "/p"


def test_the_failure_cause_is_the_runs_own_error_paragraph():
    logs = "epoch 1\nerror: Invalid job in bad.yaml (2 problems):\n  - a: x\n  - b: y\n"
    assert submit.failure_cause(logs, "Job failed") == "Invalid job in bad.yaml (2 problems):\n  - a: x\n  - b: y"
    assert submit.failure_cause("no paragraph here", "runtime_env setup failed") == "runtime_env setup failed"
