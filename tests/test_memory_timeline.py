"""scripts/plot_memory_timeline.py and the summary's host memory, on the 7B attempt's own samples and log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "results" / "realsize_7b" / "attempt1"
sys.path.insert(0, str(ROOT / "scripts"))

import plot_memory_timeline as timeline  # noqa: E402
import summarize_grpo_run as summarize  # noqa: E402


def test_the_log_marks_vllm_sleeping_and_waking_and_rays_host_oom_kill_in_order() -> None:
    marks = timeline.events(RUN / "grpo.log")
    labels = [label for label, _ in marks]
    assert {"vLLM sleeps", "vLLM wakes", "Ray kills workers (host OOM)"} <= set(labels)
    kill = max(moment for label, moment in marks if label.startswith("Ray kills"))
    assert all(moment <= kill for label, moment in marks if label == "vLLM wakes")


def test_peaks_and_host_summary_agree_with_the_raw_samples(tmp_path: Path) -> None:
    host_rows = [line.split(",") for line in (RUN / "host_memory.csv").read_text().splitlines() if line.count(",") >= 3]
    used_mib = max(int(row[1]) for row in host_rows)
    summary = summarize.host_memory(RUN / "host_memory.csv")
    assert summary is not None and summary["samples"] == len(host_rows)
    assert summary["peak_used_gib"] == used_mib / 1024
    out = tmp_path / "timeline.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_memory_timeline.py"), "--run", str(RUN), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    peaks = json.loads(result.stdout)
    assert peaks["host_peak_used_gib"] == used_mib / 1024
    assert peaks["gpu_peak_used_gib"] == summarize.gpu_memory(RUN / "gpu_memory.csv")["peak_used_gib"]
    assert out.stat().st_size > 10_000


def test_five_field_samples_report_shared_memory(tmp_path: Path) -> None:
    csv = tmp_path / "host_memory.csv"
    csv.write_text("1796320000,1024,3072,4096,512\n1796320001,2048,2048,4096,1536\n")
    summary = summarize.host_memory(csv)
    assert summary == {
        "samples": 2,
        "peak_used_gib": 2.0,
        "least_available_gib": 2.0,
        "total_gib": 4.0,
        "peak_shmem_gib": 1.5,
    }


def test_the_sampler_writes_host_samples_until_its_process_ends_and_notes_pressure_once(tmp_path: Path) -> None:
    watched = subprocess.Popen(["sleep", "300"])
    sampler = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "gpu" / "sample_memory.sh"), str(tmp_path), str(watched.pid)],
        env={**os.environ, "PRESSURE_PERCENT": "101"},  # any host is "short" of 101 %: the note is written
    )
    samples = tmp_path / "host_memory.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 2):
        time.sleep(0.2)
    watched.kill()
    watched.wait()  # reaped, so the sampler sees it gone
    assert sampler.wait(timeout=60) == 0
    summary = summarize.host_memory(samples)
    assert summary is not None and summary["samples"] >= 2
    assert 0 < summary["peak_used_gib"] < summary["total_gib"] and "peak_shmem_gib" in summary
    note = (tmp_path / "host_pressure.txt").read_text()
    assert "RSS" in note and "/dev/shm" in note
