"""Reporting of an evaluation: metrics, markdown tables and the accuracy plot of :mod:`sparse_video_r1.tools.evaluate`.

Kept apart from running the evaluation because every figure is computed from the records files
(``OUT/records_<method>.jsonl``) alone: summaries, tables and the plot can be recomputed without a model, an
engine or the agent loop.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparse_video_r1.data.nextqa import GROUP_ORDER, OTHER_GROUP, QUESTION_GROUPS, question_group
from sparse_video_r1.env.dialogue import ENVIRONMENT_FAILURES, StopReason

#: The adaptive policy's method name; the plot draws it apart from the uniform baselines.
ADAPTIVE = "adaptive"
UNKNOWN_TYPE = "unknown"
#: Stop reasons whose records carry a ``failure_reason`` (the sampler's slug, or an exception class).
_FAILURES = frozenset(reason.value for reason in ENVIRONMENT_FAILURES)


# ---------------------------------------------------------------------------------------------------
# Metrics


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    correct = sum(1 for r in records if r["correct"])
    return {"n": len(records), "correct": correct, "accuracy": _share(correct, len(records))}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def wall_time(records: Sequence[Mapping[str, Any]]) -> float:
    """Seconds spent across the runs that wrote ``records``: each run's last record marks its length."""
    last: dict[str, float] = {}
    for record in records:
        last[record["run_id"]] = max(last.get(record["run_id"], 0.0), record["run_elapsed_s"])
    return sum(last.values())


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every reported metric of one method, from its per-question records alone."""
    by_group: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    by_type: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_group[question_group(record["question_type"])].append(record)
        by_type[record["question_type"] or UNKNOWN_TYPE].append(record)
    groups = [g for g in GROUP_ORDER if g in by_group] + sorted(set(by_group) - set(GROUP_ORDER))
    stops = Counter(record["stop_reason"] for record in records)
    invalid_reasons = Counter(
        record.get("invalid_reason") or UNKNOWN_TYPE
        for record in records
        if record["stop_reason"] == StopReason.INVALID_TURN.value
    )
    failure_reasons = Counter(
        record.get("failure_reason") or UNKNOWN_TYPE for record in records if record["stop_reason"] in _FAILURES
    )
    n = len(records)
    frames = [r["frames_used"] for r in records]
    tokens = [r["visual_tokens"] for r in records]
    wall = wall_time(records)
    return {
        **_accuracy(records),
        "accuracy_by_group": {group: _accuracy(by_group[group]) for group in groups},
        "accuracy_by_type": {qtype: _accuracy(by_type[qtype]) for qtype in sorted(by_type)},
        "frames_used_mean": _mean(frames),
        "frames_used_median": _median(frames),
        "visual_tokens_mean": _mean(tokens),
        "visual_tokens_median": _median(tokens),
        "assistant_turns_mean": _mean([r["assistant_turns"] for r in records]),
        "stop_reasons": dict(sorted(stops.items())),
        "answered_share": _share(stops[StopReason.ANSWERED.value], n),
        "invalid_share": _share(stops[StopReason.INVALID_TURN.value], n),
        "invalid_reasons": dict(sorted(invalid_reasons.items())),
        "failure_reasons": dict(sorted(failure_reasons.items())),
        "truncated_share": _share(stops[StopReason.TRUNCATED.value], n),
        "context_limit_share": _share(stops[StopReason.CONTEXT_LIMIT.value], n),
        "dialogue_seconds_mean": _mean([r["seconds"] for r in records]),
        "wall_seconds": wall,
        "questions_per_second": n / wall if wall > 0 else None,
    }


# ---------------------------------------------------------------------------------------------------
# Table and plot


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Two markdown tables: the headline metrics per method, then accuracy by question type."""
    groups = [g for g in (*GROUP_ORDER, OTHER_GROUP) if any(g in m["accuracy_by_group"] for m in metrics.values())]
    header = ["method", "n", "acc %", *[f"{g} %" for g in groups], "frames mean/med", "visual tokens mean/med"]
    header += ["turns", "invalid %", "truncated %", "ctx limit %", "wall s", "q/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in metrics.items():
        cells = [name, str(m["n"]), _pct(m["accuracy"])]
        cells += [_pct(m["accuracy_by_group"].get(g, {}).get("accuracy")) for g in groups]
        cells += [
            f"{_num(m['frames_used_mean'])} / {_num(m['frames_used_median'])}",
            f"{_num(m['visual_tokens_mean'], 0)} / {_num(m['visual_tokens_median'], 0)}",
            _num(m["assistant_turns_mean"], 2),
            _pct(m["invalid_share"]),
            _pct(m["truncated_share"]),
            _pct(m["context_limit_share"]),
            _num(m["wall_seconds"]),
            _num(m["questions_per_second"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    types = sorted({t for m in metrics.values() for t in m["accuracy_by_type"]}, key=_type_order)
    lines += ["", "Accuracy % by question type (n):", ""]
    lines += ["| method | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 1)]
    for name, m in metrics.items():
        cells = [_type_cell(m["accuracy_by_type"].get(t)) for t in types]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _type_order(question_type: str) -> tuple[int, str]:
    codes = list(QUESTION_GROUPS)
    return (codes.index(question_type), "") if question_type in codes else (len(codes), question_type)


def _type_cell(entry: Mapping[str, Any] | None) -> str:
    return "-" if not entry else f"{_pct(entry['accuracy'])} ({entry['n']})"


def plot_accuracy_vs_frames(metrics: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Accuracy against mean frames shown: uniform baselines as one curve, the adaptive policy as a star."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    points = {
        name: (m["frames_used_mean"], m["accuracy"])
        for name, m in metrics.items()
        if m["frames_used_mean"] is not None and m["accuracy"] is not None
    }
    uniform = sorted((xy for name, xy in points.items() if name != ADAPTIVE), key=lambda xy: xy[0])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if uniform:
        ax.plot(*zip(*uniform, strict=True), "o-", color="tab:blue", label="uniform N frames, one turn")
    for name, (x, y) in points.items():
        # The adaptive label goes above its star, the baselines' below: a policy that never requests sits
        # exactly on uniform_<initial frames>, and the two labels must not print over each other.
        offset = (6, 8) if name == ADAPTIVE else (6, -10)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    if ADAPTIVE in points:
        x, y = points[ADAPTIVE]
        ax.plot([x], [y], "*", color="tab:red", markersize=16, label="adaptive requests")
    if points and min(x for x, _ in points.values()) > 0:
        ax.set_xscale("log", base=2)
        if uniform:  # ticks at the baselines' frame counts
            ax.set_xticks([x for x, _ in uniform])
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.1)
    top = max((y for _, y in points.values()), default=0.0)
    ax.set_ylim(-0.02, min(1.02, top + 0.1))  # room above the best point for its label and the legend
    ax.set_xlabel("mean frames shown per question")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs frames")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
