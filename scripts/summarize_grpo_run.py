"""Summarise a verl GRPO run of the frame-request loop into one JSON file.

Reads what verl itself wrote: the file logger's metrics (``trainer.logger=[...,file]``, one JSON line per
step) and the per-step rollout dumps (``trainer.rollout_data_dir``), whose per-sample fields come from
our reward function (accuracy, frames_used, assistant_turns, requested_frames). GPU memory is the FSDP
actor's peak from torch's allocator; vLLM's share is fixed by ``rollout.gpu_memory_utilization``.

    python scripts/summarize_grpo_run.py --run OUT_DIR [--out OUT_DIR/summary.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

#: verl metric keys copied per step (missing ones are reported as null).
VERL_KEYS = {
    "reward_mean": "critic/score/mean",
    "num_turns_mean": "num_turns/mean",
    "response_length_mean": "response_length/mean",
    "generation_s": "timing_s/gen",
    "update_actor_s": "timing_s/update_actor",
    "step_s": "timing_s/step",
    "actor_peak_gpu_memory_allocated_gb": "actor/perf/max_memory_allocated_gb",
    "actor_peak_gpu_memory_reserved_gb": "actor/perf/max_memory_reserved_gb",
    "actor_pg_loss": "actor/pg_loss",
    "actor_entropy": "actor/entropy",
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rollout_stats(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Per-step dialogue statistics over every rollout of the step."""

    def mean(key: str) -> float:
        return statistics.fmean(float(sample[key]) for sample in samples)

    return {
        "samples": len(samples),
        "score_mean": mean("score"),
        "accuracy": mean("accuracy"),
        "format": mean("format"),
        "mean_frames": mean("frames_used"),
        "mean_assistant_turns": mean("assistant_turns"),
        "share_requested_frames": statistics.fmean(float(s["requested_frames"] > 0) for s in samples),
        "share_multi_turn": statistics.fmean(float(s["assistant_turns"] > 1) for s in samples),
        "multi_turn_samples": sum(1 for s in samples if s["assistant_turns"] > 1),
    }


def summarize(run: Path) -> dict[str, Any]:
    metrics = {entry["step"]: entry["data"] for entry in read_jsonl(run / "metrics.jsonl")}
    steps = []
    for step in sorted(metrics):
        data = metrics[step]
        row: dict[str, Any] = {"step": step}
        row.update({name: data.get(key) for name, key in VERL_KEYS.items()})
        dump = run / "rollouts" / f"{step}.jsonl"
        if dump.is_file():
            row.update(rollout_stats(read_jsonl(dump)))
        steps.append(row)
    command = run / "command.txt"
    sft = run / "sft_metrics.json"
    with_dumps = [row for row in steps if "samples" in row]
    return {
        "steps_completed": len(steps),
        "command": command.read_text().strip() if command.is_file() else None,
        "sft": json.loads(sft.read_text()) if sft.is_file() else None,
        "totals": {
            "multi_turn_samples_trained": sum(row["multi_turn_samples"] for row in with_dumps),
            "samples_trained": sum(row["samples"] for row in with_dumps),
            "actor_peak_gpu_memory_allocated_gb": max(
                (row["actor_peak_gpu_memory_allocated_gb"] or 0.0 for row in steps), default=None
            ),
        },
        "per_step": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    summary = summarize(args.run)
    out = args.out or args.run / "summary.json"
    out.write_text(json.dumps(summary, indent=2))
    for row in summary["per_step"]:
        print(
            f"step {row['step']}: reward {row.get('reward_mean')}, turns {row.get('mean_assistant_turns')}, "
            f"frames {row.get('mean_frames')}, requested {row.get('share_requested_frames')}, "
            f"gen {row.get('generation_s')} s, update {row.get('update_actor_s')} s"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
