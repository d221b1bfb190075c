"""GPU and host memory of a real-size run against time, with the events that explain them.

Reads what ``scripts/gpu/train_realsize.sh`` samples once a second (``gpu_memory.csv`` from nvidia-smi,
``host_memory.csv`` from ``free -m``) and marks, from ``grpo.log``, when vLLM slept and woke (the rollout's
share of the GPU comes and goes with them) and when Ray's memory monitor killed workers. Why: at 7B on one
GPU the host's RAM, not the GPU, was the limit, and only the two curves side by side show it.

    python scripts/plot_memory_timeline.py --run RUN_DIR [--out RUN_DIR/memory_timeline.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from summarize_grpo_run import gpu_memory, gpu_samples, host_memory, host_samples

#: vLLM's log prefix up to the time of day (group 1), and the marks taken from grpo.log: label -> pattern.
VLLM = r"\d\d-\d\d (\d\d:\d\d:\d\d) \[abstract\.py:\d+\] It took [0-9.]+ seconds to "
EVENTS = {
    "vLLM sleeps": re.compile(VLLM + r"fall asleep"),
    "vLLM wakes": re.compile(VLLM + r"wake up tags \['weights'\]"),
    "Ray kills workers (host OOM)": re.compile(r"\[[-0-9]{10} (\d\d:\d\d:\d\d),\d+ E .*killed due to memory pressure"),
}


def seconds_of_day(clock: str) -> int:
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def gpu_series(path: Path) -> list[tuple[int, float]]:
    """(second of day, GiB used) of the nvidia-smi samples."""
    return [(seconds_of_day(stamp.split()[1].split(".")[0]), used / 1024) for stamp, used, _ in gpu_samples(path)]


def host_series(path: Path) -> list[tuple[int, float]]:
    """(second of day, GiB used) of the host samples (epoch seconds, UTC, as the host logs)."""
    moments = [(dt.datetime.fromtimestamp(row[0], dt.timezone.utc), row[1]) for row in host_samples(path)]
    return [(moment.hour * 3600 + moment.minute * 60 + moment.second, used / 1024) for moment, used in moments]


def events(log: Path) -> list[tuple[str, int]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        for label, pattern in EVENTS.items():
            match = pattern.search(line)
            if match:
                found.append((label, seconds_of_day(match.group(1))))
    return found


def peaks(run: Path) -> dict[str, float | None]:
    """Largest GPU and host use, in GiB (what the run's README quotes), as summarize_grpo_run.py computes them."""
    gpu, host = gpu_memory(run / "gpu_memory.csv"), host_memory(run / "host_memory.csv")
    return {
        "gpu_peak_used_gib": gpu["peak_used_gib"] if gpu else None,
        "host_peak_used_gib": host["peak_used_gib"] if host else None,
    }


def plot(run: Path, out: Path) -> None:
    gpu = gpu_series(run / "gpu_memory.csv")
    host = host_series(run / "host_memory.csv")
    start = min(t for t, _ in gpu + host)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for series, label in ((gpu, "GPU used (nvidia-smi)"), (host, "host RAM used (free)")):
        ax.plot([(t - start) / 60 for t, _ in series], [used for _, used in series], label=label)
    colours = {"vLLM sleeps": "grey", "vLLM wakes": "tab:green", "Ray kills workers (host OOM)": "tab:red"}
    labelled: set[str] = set()
    for label, moment in events(run / "grpo.log") if (run / "grpo.log").is_file() else []:
        ax.axvline((moment - start) / 60, color=colours[label], linestyle="--", linewidth=1,
                   label=None if label in labelled else label)  # fmt: skip
        labelled.add(label)
    ax.set_xlabel("minutes since sampling began")
    ax.set_ylabel("GiB")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder with gpu_memory.csv and host_memory.csv")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN/memory_timeline.png)")
    args = parser.parse_args()
    for name in ("gpu_memory.csv", "host_memory.csv"):
        if not (args.run / name).is_file():
            parser.error(f"{args.run / name} is missing: train_realsize.sh samples it during the train stage")
    plot(args.run, args.out or args.run / "memory_timeline.png")
    print(json.dumps(peaks(args.run)))


if __name__ == "__main__":
    main()
