"""Learning curves and the held-out table of the needle proof-of-learning runs (``scripts/gpu/needle_grpo.sh``).

Curves: per training step, from what verl itself wrote into each run folder: the rollout dumps
(``rollouts/<step>.jsonl``, one line per dialogue with the fields of
:func:`sparse_video_r1.synthetic.needle.compute_score`) and the file logger's metrics (``metrics*.jsonl``: one
file per invocation, so a resumed run adds a file; a later file wins for a step both hold). Validation points
(greedy, the held-out split) come from the ``val-aux/needle/<field>/mean@1`` metrics. Writes
``needle_curves.json`` (every step of every run) and ``needle_curves.png`` (training accuracy, distance to the
needle, frames and validation accuracy against step).

Settling: for each run, the least-squares slope of training accuracy over its last 20 % of trained steps, with
its standard error; a curve is flat within noise when the slope is within two standard errors of zero
(``needle_settling.json``).

Table: ``--eval NAME=DIR`` adds the records of ``python -m sparse_video_r1.tools.evaluate`` runs
(``DIR/records_<method>.jsonl``) scored against the needles of ``--val``, with binomial standard errors; writes
``needle_table.{json,md}``. Runs named ``ARM_s<seed>`` (and ``ARM`` itself, seed 0) are one arm at several seeds:
``needle_seeds.{json,md}`` gives each arm's mean and sd over its seeds, per method.

    python scripts/plot_needle_curves.py --run main=RUN_DIR --run ablation=RUN_DIR --out OUT \\
        [--val DATA/val.parquet --eval sft=EVAL_DIR --eval main=EVAL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyarrow.parquet as pq

from sparse_video_r1.synthetic import needle
from sparse_video_r1.tools.curves import read_file_logger, rolling
from sparse_video_r1.training.rollout_dump import read_jsonl

#: Per-dialogue fields of the rollout dumps averaged per step.
DUMP_FIELDS = ("accuracy", "hit_needle", "needle_distance", "proximity", "frames_used", "assistant_turns", "score")
#: Validation metrics (verl's names for the reward's extra fields) copied per step.
VAL_FIELDS = ("accuracy", "hit_needle", "needle_distance", "frames_used", "assistant_turns")
#: Training metrics copied per step.
VERL_KEYS = {"step_s": "timing_s/step", "reward_mean": "critic/score/mean", "entropy": "actor/entropy"}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def step_stats(samples: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Means of one step's dialogues; ``needle_distance_requested`` only over dialogues that asked for frames."""
    row: dict[str, float | int | None] = {"samples": len(samples)}
    # (``proximity`` is missing from the dumps of runs made before the reward returned it.)
    row.update({key: _mean([float(s[key]) for s in samples if key in s]) for key in DUMP_FIELDS})
    asked = [s for s in samples if float(s["requested_frames"]) > 0]
    row["share_requested"] = len(asked) / len(samples) if samples else None
    row["needle_distance_requested"] = _mean([float(s["needle_distance"]) for s in asked])
    return row


def run_curve(run: Path) -> list[dict[str, Any]]:
    """One row per step that has a rollout dump or a metrics line."""
    metrics = read_file_logger(sorted(run.glob("metrics*.jsonl")))
    dumps = {int(path.stem): path for path in (run / "rollouts").glob("*.jsonl") if path.stem.isdigit()}
    rows = []
    for step in sorted(set(metrics) | set(dumps)):
        data = metrics.get(step, {})
        row: dict[str, Any] = {"step": step}
        samples = read_jsonl(dumps[step]) if step in dumps else []
        if samples:
            row.update(step_stats(samples))
        row.update({name: data[key] for name, key in VERL_KEYS.items() if key in data})
        for key in VAL_FIELDS:
            value = data.get(f"val-aux/{needle.DATA_SOURCE}/{key}/mean@1")
            if value is not None:
                row[f"val_{key}"] = value
        rows.append(row)
    return rows


#: Share of a run's trained steps whose accuracy slope says whether the curve has settled.
SETTLING_SHARE = 0.2


def settling(rows: Sequence[Mapping[str, Any]], key: str = "accuracy", share: float = SETTLING_SHARE) -> dict[str, Any]:
    """Slope of ``key`` per step over the last ``share`` of the steps that have it, and its standard error."""
    points = [(float(row["step"]), float(row[key])) for row in rows if row.get(key) is not None]
    window = points[-max(3, math.ceil(share * len(points))) :]
    result: dict[str, Any] = {"key": key, "steps": len(points), "window": len(window), "slope": None, "slope_se": None}
    if len(window) < 3:
        result["flat"] = None
        return result
    xs, ys = zip(*window, strict=True)
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - y_mean - slope * (x - x_mean)) ** 2 for x, y in zip(xs, ys, strict=True))
    slope_se = math.sqrt(residual / (len(window) - 2) / sxx)
    result.update(
        first_step=int(xs[0]), last_step=int(xs[-1]), slope=slope, slope_se=slope_se,
        flat=abs(slope) <= 2 * slope_se, window_mean=y_mean,
    )  # fmt: skip
    return result


#: Steps in the rolling mean drawn over each training curve (one step is 64 dialogues: noisy).
SMOOTHING = 10


def plot_curves(curves: Mapping[str, list[dict[str, Any]]], path: Path) -> None:
    panels = [
        ("accuracy", "training accuracy (rollouts)"),
        ("hit_needle", "share of dialogues shown the card"),
        ("needle_distance_requested", f"distance to needle, s (requesting; {SMOOTHING}-step median)"),
        ("frames_used", "frames per dialogue"),
    ]
    if any(sum(row.get("val_accuracy") is not None for row in rows) > 1 for rows in curves.values()):
        panels.append(("val_accuracy", "held-out accuracy (greedy)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for index, (name, rows) in enumerate(curves.items()):
            points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            colour = f"C{index}"
            if key.startswith("val_"):
                axis.plot(steps, values, marker="o", markersize=3, color=colour, label=name)
                continue
            axis.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            # A step's mean distance can hold one far-off request; the median of steps is robust to it.
            statistic = statistics.median if key == "needle_distance_requested" else statistics.fmean
            label = f"{name} ({SMOOTHING}-step mean)"
            axis.plot(steps, rolling(values, SMOOTHING, statistic), color=colour, label=label)
        if key == "needle_distance_requested":
            # Runs before the reward clamped requests to the video logged a few far-off ones (one of 9000 s).
            axis.set_ylim(0, needle.MAX_SECONDS)
        if key in ("accuracy", "val_accuracy"):
            axis.axhline(1 / len(needle.COLOURS), color="grey", linestyle=":", linewidth=1, label="chance")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def score_records(records: Sequence[Mapping[str, Any]], infos: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, frames and where the dialogues looked, for evaluate's records of the ``infos`` questions."""
    rows = []
    for record in records:
        card = needle.Needle.from_extra_info(infos[record["qid"]])
        requested = [float(t) for t in record["requested_timestamps"]]
        rows.append(
            {
                "accuracy": float(record["correct"]),
                "format": float(record["stop_reason"] == "answered"),
                "hit_needle": float(any(card.shows(float(t)) for t in record["shown_timestamps"])),
                "needle_distance": min((abs(t - card.time) for t in requested), default=card.duration),
                "frames_used": float(record["frames_used"]),
                "requested_frames": float(len(requested)),
                "assistant_turns": float(record.get("assistant_turns", 1 + bool(requested))),
            }
        )
    stats: dict[str, Any] = dict(needle.outcome_stats(rows))
    count = len(rows)
    for key in ("accuracy", "hit_rate"):  # binomial standard errors
        value = stats[key]
        stats[f"{key}_se"] = math.sqrt(value * (1 - value) / count) if value is not None and count else None
    stats["assistant_turns"] = statistics.fmean(row["assistant_turns"] for row in rows) if rows else None
    return stats


def eval_table(val: Path, evals: Mapping[str, Path]) -> list[dict[str, Any]]:
    """One row per (evaluation, method); uniform rows also give the accuracy bound of a perfect reader."""
    infos = {info["qid"]: info for info in pq.read_table(val).column("extra_info").to_pylist()}
    table = []
    for name, folder in evals.items():
        for path in sorted(folder.glob("records_*.jsonl")):
            method = path.stem.removeprefix("records_")
            latest = {record["qid"]: record for record in read_jsonl(path) if record["qid"] in infos}
            row: dict[str, Any] = {"model": name, "method": method, **score_records(list(latest.values()), infos)}
            if method.startswith("uniform_"):
                hit = needle.uniform_hit_rate([infos[qid] for qid in latest], int(method.removeprefix("uniform_")))
                row["perfect_reader_accuracy"] = hit + (1 - hit) / len(needle.COLOURS)
            table.append(row)
    return table


#: Fields averaged over an arm's seeds.
SEED_FIELDS = ("accuracy", "hit_rate", "frames_used", "assistant_turns")


def arm_of(model: str) -> tuple[str, int]:
    """``main_s2`` -> ("main", 2); a name without a seed suffix is seed 0."""
    match = re.fullmatch(r"(.+)_s(\d+)", model)
    return (match.group(1), int(match.group(2))) if match else (model, 0)


def seed_table(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm, method): how many seeds, and the mean and sd over them of each of SEED_FIELDS."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in table:
        groups.setdefault((arm_of(row["model"])[0], row["method"]), []).append(row)
    summary = []
    for (arm, method), rows in groups.items():
        entry: dict[str, Any] = {"arm": arm, "method": method, "seeds": sorted(arm_of(row["model"])[1] for row in rows)}
        for key in SEED_FIELDS:
            values = [float(row[key]) for row in rows if row.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def seed_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    def cell(entry: Mapping[str, Any], key: str) -> str:
        mean, sd = entry[key], entry[f"{key}_sd"]
        return "–" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    lines = ["| arm | method | seeds | " + " | ".join(SEED_FIELDS) + " |", "|" + "---|" * (3 + len(SEED_FIELDS))]
    for entry in summary:
        seeds = ",".join(map(str, entry["seeds"]))
        lines.append(
            f"| {entry['arm']} | {entry['method']} | {seeds} | "
            + " | ".join(cell(entry, k) for k in SEED_FIELDS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def markdown(table: Sequence[Mapping[str, Any]]) -> str:
    columns = ("model", "method", "samples", "accuracy", "accuracy_se", "frames_used", "assistant_turns",
               "hit_rate", "hit_rate_se", "accuracy_when_hit", "needle_distance", "share_requested",
               "perfect_reader_accuracy")  # fmt: skip

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _named_paths(items: Sequence[str]) -> dict[str, Path]:
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"expected NAME=PATH, got {items}")
    return {name: Path(path) for name, path in pairs}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR (repeatable)")
    parser.add_argument("--curves", type=Path, help="re-plot a needle_curves.json written earlier instead of --run")
    parser.add_argument("--eval", action="append", default=[], help="NAME=EVALUATE_OUT_DIR (repeatable)")
    parser.add_argument("--val", type=Path, help="the held-out parquet the evaluations ran on")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {name: run for name, run in _named_paths(args.run).items() if run.is_dir()}
    curves = json.loads(args.curves.read_text()) if args.curves else None
    if runs:
        curves = {name: run_curve(run) for name, run in runs.items()}
        (args.out / "needle_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    if curves:
        plot_curves(curves, args.out / "needle_curves.png")
        settled = {}
        for name, rows in curves.items():
            last = [row for row in rows if "accuracy" in row][-10:]
            means = {key: _mean([row[key] for row in last]) for key in ("accuracy", "needle_distance", "frames_used")}
            print(f"{name}: {len(rows)} steps logged; means over the last {len(last)} trained steps: {means}")
            settled[name] = settling(rows)
            print(f"{name}: settling {settled[name]}")
        (args.out / "needle_settling.json").write_text(json.dumps(settled, indent=1) + "\n")
    if args.eval:
        if args.val is None:
            raise SystemExit("--eval needs --val")
        table = eval_table(args.val, _named_paths(args.eval))
        (args.out / "needle_table.json").write_text(json.dumps(table, indent=1) + "\n")
        (args.out / "needle_table.md").write_text(markdown(table))
        print(markdown(table))
        seeds = seed_table(table)
        (args.out / "needle_seeds.json").write_text(json.dumps(seeds, indent=1) + "\n")
        (args.out / "needle_seeds.md").write_text(seed_markdown(seeds))
        print(seed_markdown(seeds))


if __name__ == "__main__":
    main()
