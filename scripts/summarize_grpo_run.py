"""Summarise a verl GRPO run of the frame-request loop into one JSON file.

Reads what verl itself wrote: the file logger's metrics (``trainer.logger=[...,file]``, one JSON line per
step) and the per-step rollout dumps (``trainer.rollout_data_dir``), whose per-sample fields come from
our reward function (accuracy, frames_used, assistant_turns, requested_frames). GPU memory is the FSDP
actor's peak from torch's allocator; vLLM's share is fixed by ``rollout.gpu_memory_utilization``. Where the run
script sampled them (scripts/gpu/sample_memory.sh), ``gpu_memory.csv`` (nvidia-smi) and ``host_memory.csv``
(``/proc/meminfo``) give the whole device's and the host's peaks: at 7B on one GPU the host's RAM, where offloaded
states live, is the limit.

    python scripts/summarize_grpo_run.py --run OUT_DIR [--out OUT_DIR/summary.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.training.dialogue_metrics import PREFIX, dialogue_metrics

#: verl metric keys copied per step (missing ones are reported as null); a tuple lists the names the key has
#: in verl's legacy trainer and in its v1 trainer, first found wins.
VERL_KEYS: dict[str, str | tuple[str, ...]] = {
    "reward_mean": "critic/score/mean",
    "num_turns_mean": "num_turns/mean",
    "num_turns_max": "num_turns/max",
    "prompt_length_mean": "prompt_length/mean",
    "response_length_mean": "response_length/mean",
    "response_length_max": "response_length/max",
    "generation_s": "timing_s/gen",
    "reward_s": "timing_s/reward",
    "old_log_prob_s": "timing_s/old_log_prob",
    "ref_s": "timing_s/ref",
    "adv_s": "timing_s/adv",
    "update_actor_s": "timing_s/update_actor",
    "update_weights_s": "timing_s/update_weights",
    "step_s": "timing_s/step",
    "total_tokens": "perf/total_num_tokens",
    "tokens_per_s_per_gpu": "perf/throughput",
    "actor_mfu": ("perf/mfu/actor", "actor/mfu"),
    "actor_peak_gpu_memory_allocated_gb": ("actor/perf/max_memory_allocated_gb", "perf/max_memory_allocated_gb"),
    "actor_peak_gpu_memory_reserved_gb": ("actor/perf/max_memory_reserved_gb", "perf/max_memory_reserved_gb"),
    "host_memory_used_gb": ("actor/perf/cpu_memory_used_gb", "perf/cpu_memory_used_gb"),
    "actor_pg_loss": "actor/pg_loss",
    "actor_entropy": "actor/entropy",
}

#: Lines of vLLM's log that say how it used its share of the GPU.
VLLM_LOG_PATTERNS = {
    "vllm_weights_gib": re.compile(r"Model loading took ([0-9.]+) GiB"),
    "vllm_kv_cache_gib": re.compile(r"Available KV cache memory: ([0-9.]+) GiB"),
    "vllm_kv_cache_tokens": re.compile(r"GPU KV cache size: ([0-9,]+) tokens"),
}


def verl_value(data: dict[str, Any], key: str | tuple[str, ...]) -> Any:
    for name in (key,) if isinstance(key, str) else key:
        if name in data:
            return data[name]
    return None


def vllm_memory(*logs: Path) -> dict[str, float | None]:
    """vLLM's own report of its weights and KV cache (first match in the console or Ray worker logs)."""
    text = "\n".join(log.read_text(errors="replace") for log in logs if log.is_file())
    found: dict[str, float | None] = {}
    for name, pattern in VLLM_LOG_PATTERNS.items():
        match = pattern.search(text)
        found[name] = float(match.group(1).replace(",", "")) if match else None
    return found


def gpu_samples(csv_path: Path) -> list[tuple[str, int, int]]:
    """(timestamp, used MiB, total MiB) of ``nvidia-smi --query-gpu=timestamp,memory.used,memory.total,...`` lines."""
    samples = []
    for line in csv_path.read_text().splitlines()[1:]:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 3 and fields[1].isdigit():
            samples.append((fields[0], int(fields[1]), int(fields[2])))
    return samples


def host_samples(csv_path: Path) -> list[list[int]]:
    """``epoch_s,used_mib,available_mib,total_mib[,shmem_mib]`` lines of scripts/gpu/sample_memory.sh
    (used = total - available; the first 7B attempt's file predates the Shmem column)."""
    samples = []
    for line in csv_path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) in (4, 5) and all(field.strip().isdigit() for field in fields):
            samples.append([int(field) for field in fields])
    return samples


def gpu_memory(csv_path: Path) -> dict[str, float] | None:
    """Peak and total of the nvidia-smi samples, in GiB."""
    samples = gpu_samples(csv_path) if csv_path.is_file() else []
    if not samples:
        return None
    return {
        "samples": len(samples),
        "peak_used_gib": max(used for _, used, _ in samples) / 1024,
        "total_gib": max(total for _, _, total in samples) / 1024,
    }


def host_memory(csv_path: Path) -> dict[str, float] | None:
    """Peak used, least available and total host memory (and peak Shmem where sampled), in GiB."""
    rows = host_samples(csv_path) if csv_path.is_file() else []
    if not rows:
        return None
    summary = {
        "samples": len(rows),
        "peak_used_gib": max(row[1] for row in rows) / 1024,
        "least_available_gib": min(row[2] for row in rows) / 1024,
        "total_gib": max(row[3] for row in rows) / 1024,
    }
    if all(len(row) == 5 for row in rows):
        summary["peak_shmem_gib"] = max(row[4] for row in rows) / 1024
    return summary


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
        # Every turn of the dialogue parsed: it did not end on an unreadable or cut-off turn.
        "share_all_turns_parsed": (
            1.0 - mean("stop/invalid_turn") - mean("stop/truncated") if "stop/truncated" in samples[0] else None
        ),
        **{key: mean(key) for key in sorted(samples[0]) if key.startswith("stop/")},
    }


#: verl's console logger prints one line per step: ``step:N - key:value - key:value ...``.
_CONSOLE_STEP = re.compile(r"step:(\d+) - (.*)$")
_CONSOLE_METRIC = re.compile(r"([\w/@.-]+):(?:np\.\w+\()?([-+0-9.eE]+|nan|inf)\)?(?: - |$)")


def console_metrics(log: Path) -> dict[int, dict[str, float]]:
    """Per-step metrics from verl's console output, for runs whose file logger output did not survive."""
    steps: dict[int, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _CONSOLE_STEP.search(line)
        if match:
            steps[int(match.group(1))] = {key: float(value) for key, value in _CONSOLE_METRIC.findall(match.group(2))}
    return steps


def step_metrics(run: Path) -> dict[int, dict[str, Any]]:
    """verl's file logger output if present, else what its console logger printed (grpo.log or console.log)."""
    if (run / "metrics.jsonl").is_file():
        return {entry["step"]: entry["data"] for entry in read_jsonl(run / "metrics.jsonl")}
    for name in ("grpo.log", "console.log"):
        if (run / name).is_file():
            return console_metrics(run / name)
    raise FileNotFoundError(f"{run}: no metrics.jsonl, grpo.log or console.log")


def record_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step dialogue statistics from the dialogue records (``rollouts/dialogues/<step>.jsonl``).

    The means and stop rates are the training metrics' own reduction (:func:`dialogue_metrics`).
    """
    metrics = dialogue_metrics(records)
    stops = {reason.value: metrics[f"{PREFIX}/stop/{reason.value}"] for reason in StopReason}
    return {
        "samples": len(records),
        "mean_frames": metrics[f"{PREFIX}/frames_shown/mean"],
        "mean_assistant_turns": metrics[f"{PREFIX}/assistant_turns/mean"],
        "share_requested_frames": statistics.fmean(float(record["requested_frames"] > 0) for record in records),
        "share_multi_turn": statistics.fmean(float(record["assistant_turns"] > 1) for record in records),
        "multi_turn_samples": sum(1 for record in records if record["assistant_turns"] > 1),
        "share_all_turns_parsed": 1.0 - stops["invalid_turn"] - stops["truncated"],
        "parseable_turn_share": metrics[f"{PREFIX}/parseable_turn_share"],
        **{f"stop/{reason}": rate for reason, rate in stops.items()},
    }


def summarize(run: Path) -> dict[str, Any]:
    metrics = step_metrics(run)
    # A step whose metrics never came (the run died before logging it) still counts its dumped dialogues.
    dumped = {int(path.stem) for path in (run / "rollouts" / "dialogues").glob("*.jsonl") if path.stem.isdigit()}
    steps = []
    all_records: list[dict[str, Any]] = []
    for step in sorted(set(metrics) | dumped):
        data = metrics.get(step, {})
        row: dict[str, Any] = {"step": step}
        row.update({name: verl_value(data, key) for name, key in VERL_KEYS.items()})
        dump = run / "rollouts" / f"{step}.jsonl"
        samples = read_jsonl(dump) if dump.is_file() else []
        records = run / "rollouts" / "dialogues" / f"{step}.jsonl"
        if samples and "accuracy" in samples[0]:
            row.update(rollout_stats(samples))
        elif records.is_file():
            # verl's v1 trainer dumps training rollouts without the reward's per-sample fields; the dialogue
            # records our metrics hook writes beside them carry the agent loop's.
            step_records = read_jsonl(records)
            all_records.extend(step_records)
            row.update(record_stats(step_records))
        steps.append(row)
    command = run / "command.txt"
    sft = run / "sft_metrics.json"
    with_dumps = [row for row in steps if "samples" in row]
    return {
        "steps_completed": len(metrics),
        "command": command.read_text().strip() if command.is_file() else None,
        "sft": json.loads(sft.read_text()) if sft.is_file() else None,
        "vllm": vllm_memory(run / "grpo.log", run / "console.log", run / "vllm_memory.log"),
        "gpu_memory": gpu_memory(run / "gpu_memory.csv"),
        "host_memory": host_memory(run / "host_memory.csv"),
        "totals": {
            "multi_turn_samples_trained": sum(row["multi_turn_samples"] for row in with_dumps) if with_dumps else None,
            "samples_trained": sum(row["samples"] for row in with_dumps) if with_dumps else None,
            "parseable_turn_share": (
                dialogue_metrics(all_records)[f"{PREFIX}/parseable_turn_share"] if all_records else None
            ),
            "actor_peak_gpu_memory_allocated_gb": max(
                (peak for row in steps if (peak := row["actor_peak_gpu_memory_allocated_gb"]) is not None), default=None
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
