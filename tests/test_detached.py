"""scripts/gpu/detached.sh: a job outlives the call that started it, later calls attach, its exit status and a
job that vanished are reported by exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def detached(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "detached.sh"), *args],
        env={**os.environ, "DETACHED_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_job_runs_on_after_the_starting_call_and_later_calls_get_its_log_and_status(tmp_path: Path) -> None:
    started = detached(tmp_path, "job", "0", "bash", "-c", "echo first; sleep 2; echo second; exit 4")
    assert started.returncode == 0 and "still running" in started.stdout

    attached = detached(tmp_path, "job", "30")
    assert "attaching" in attached.stdout and "second" in attached.stdout
    assert attached.returncode == 4

    again = detached(tmp_path, "job", "30")
    assert again.returncode == 4 and "already ended with exit status 4" in again.stdout


def test_a_job_killed_from_outside_is_reported_as_vanished(tmp_path: Path) -> None:
    started = detached(tmp_path, "job", "0", "sleep", "30")
    assert started.returncode == 0
    pid = int((tmp_path / "job" / "pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)
    vanished = detached(tmp_path, "job", "5")
    assert vanished.returncode == 3 and "without an exit status" in vanished.stdout


def test_attaching_without_a_job_or_command_is_an_error(tmp_path: Path) -> None:
    result = detached(tmp_path, "nothing", "0")
    assert result.returncode == 2 and "no command given" in result.stdout
