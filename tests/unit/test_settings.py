"""Environment settings as a user meets them: typed reads, and a mistyped value named in one line."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import subprocess
import sys

import pytest

from orchestrator import settings
from orchestrator.errors import OrchestratorError, SettingError
from tests.conftest import REPO

SECONDS = settings.Setting("ORCHESTRATOR_TEST_WAIT_S", "0.5", "a test setting in seconds")
THREADS = settings.Setting("ORCHESTRATOR_TEST_THREADS", "16", "a test setting counting threads")


def test_an_unset_setting_reads_its_default(monkeypatch):
    monkeypatch.delenv(SECONDS.name, raising=False)
    assert SECONDS.get_float() == 0.5 and THREADS.get_int() == 16


def test_a_set_setting_reads_its_value(monkeypatch):
    monkeypatch.setenv(SECONDS.name, "2.5")
    monkeypatch.setenv(THREADS.name, "4")
    assert SECONDS.get_float() == 2.5 and THREADS.get_int() == 4


def test_get_int_truncates_a_fractional_value_toward_zero(monkeypatch):
    monkeypatch.setenv(THREADS.name, "2.7")
    assert THREADS.get_int() == 2


def test_a_value_that_is_not_a_number_is_a_setting_error_naming_the_variable_value_and_unit(monkeypatch):
    monkeypatch.setenv(SECONDS.name, "abc")
    with pytest.raises(SettingError) as info:
        SECONDS.get_float()
    assert str(info.value) == ("environment variable ORCHESTRATOR_TEST_WAIT_S='abc': expected a number of seconds "
                               "(unset it for the default, 0.5)")


@pytest.mark.parametrize("value", ["abc", "", "inf", "nan"])
def test_get_int_refuses_what_is_not_a_finite_number(monkeypatch, value):
    monkeypatch.setenv(THREADS.name, value)
    with pytest.raises(SettingError) as info:
        THREADS.get_int()
    assert str(info.value) == (f"environment variable ORCHESTRATOR_TEST_THREADS={value!r}: expected a finite "
                               "number of threads (unset it for the default, 16)")


def test_a_setting_error_is_an_orchestrator_error_that_exits_2_and_survives_pickling():
    error = SettingError("environment variable X='y': expected a number")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, OrchestratorError) and copy.exit_code == 2 and str(copy) == str(error)


def test_every_numeric_setting_default_reads_as_a_number():
    declared = [s for s in vars(settings).values() if isinstance(s, settings.Setting)]
    numeric = [s for s in declared if s.name.endswith(("_S", "_MB", "_THREADS"))]
    assert numeric and all(isinstance(s.get_float(), float) for s in numeric)


def test_a_mistyped_setting_on_the_validate_path_exits_2_naming_the_variable(tmp_path):
    # validate reads the Parquet footers with ORCHESTRATOR_FOOTER_READ_THREADS threads, after writing
    # the quickstart's demo data under tmp_path (its data.path is relative to the working directory).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[settings.FOOTER_READ_THREADS.name] = "many"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(REPO / "jobs" / "quickstart.yaml")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "ORCHESTRATOR_FOOTER_READ_THREADS='many'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_each_setting_is_named_after_its_variable_once_and_every_use_names_one_that_exists():
    declared = {name: value for name, value in vars(settings).items() if isinstance(value, settings.Setting)}
    assert all(name == s.name.removeprefix("ORCHESTRATOR_") for name, s in declared.items()), declared
    assert len({s.name for s in declared.values()}) == len(declared)
    used = {match for path in pathlib.Path(settings.__file__).parent.rglob("*.py")
            for match in re.findall(r"\bsettings\.([A-Z][A-Z0-9_]+)\b", path.read_text())}
    assert used and used <= set(declared), used - set(declared)
