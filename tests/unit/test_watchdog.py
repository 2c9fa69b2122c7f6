"""The watchdog: a process whose training thread stops moving on is ended, saying where it was stuck."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from orchestrator.train.watchdog import STALL_EXIT_CODE

STUCK = textwrap.dedent("""
    import json, sys, threading, time
    from orchestrator.train.watchdog import Watchdog

    def post(record):
        with open(sys.argv[1], "w") as out:
            json.dump(record, out)

    def read_that_never_returns():
        threading.Event().wait()

    watchdog = Watchdog(0.5, post)
    watchdog.start()
    for step in range(1, 6):  # moving on: no stall
        watchdog.beat("training a step", step)
        time.sleep(0.2)
    watchdog.beat("reading the next batch", 6)
    read_that_never_returns()
""")


def test_a_thread_that_stops_beating_ends_its_process_with_what_it_was_doing_and_its_stack(tmp_path):
    record_file = tmp_path / "stall.json"
    done = subprocess.run([sys.executable, "-c", STUCK, str(record_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == STALL_EXIT_CODE, done.stderr
    record = json.loads(record_file.read_text())
    assert record["kind"] == "stall" and record["doing"] == "reading the next batch" and record["step"] == 6
    assert record["idle_s"] >= 0.5
    stack = record["stack"]
    assert stack.startswith('Thread "MainThread"') and "read_that_never_returns" in stack
    assert "_watch" not in stack  # the watchdog's own thread is left out


def test_a_closed_watchdog_never_fires(tmp_path):
    script = STUCK.replace("read_that_never_returns()\n", "watchdog.close()\ntime.sleep(1.5)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "stall.json")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "stall.json").exists()
