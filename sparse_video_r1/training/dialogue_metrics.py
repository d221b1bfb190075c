"""Per-step dialogue metrics: what the policy did in one training step's rollouts, as flat ``dialogue/…`` scalars.

verl's own step metrics say how long responses were and what they scored, not how a dialogue went. The
numbers that do exist per sample (the agent loop's ``extra_fields``, the reward's extra keys, the row's
``extra_info``) are reduced here to the scalars a tracker can plot. This module knows nothing of verl's
trainers: :mod:`sparse_video_r1.training.verl_metrics` hands it one :func:`dialogue_record` per trajectory from
whichever trainer runs, and the tests and the curves tool call it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sparse_video_r1.data.nextqa import GROUP_ORDER, question_group
from sparse_video_r1.env.dialogue import StopReason

#: Every metric name starts with this prefix (``dialogue/frames_shown/mean``...).
PREFIX = "dialogue"

#: Per-dialogue counts reported as mean / min / p50 / max: metric name -> the agent loop's field.
DISTRIBUTIONS = {
    "frames_shown": "frames_used",
    "assistant_turns": "assistant_turns",
    "requested_frames": "requested_frames",
}
#: Per-dialogue counts reported as a mean: metric name -> the agent loop's field.
MEANS = {
    "requested_timestamps": "requested_timestamps",
    "clamped_timestamps": "clamped_timestamps",
    "repeated_timestamps": "repeated_timestamps",
    "over_budget_timestamps": "over_budget_timestamps",
}


def dialogue_record(
    loop_fields: Mapping[str, Any],
    reward_fields: Mapping[str, Any] | None = None,
    extra_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One trajectory's fields merged: the loop's ``extra_fields`` win over the reward's keys of the same name.

    ``accuracy`` comes from the reward when it ran, else from the loop's answer against the row's truth;
    ``question_type`` from the row (NExT-QA's type code, or None).
    """
    extra_info = extra_info or {}
    record: dict[str, Any] = {**(reward_fields or {}), **loop_fields}
    if "accuracy" not in record and extra_info.get("answer") is not None:
        record["accuracy"] = float(loop_fields.get("predicted_answer") == extra_info["answer"])
    record["question_type"] = extra_info.get("question_type")
    return record


def _count(value: Any) -> float:
    """A field that is a count, or a list whose length is the count (``requested_timestamps``)."""
    if isinstance(value, list | tuple | np.ndarray):
        return float(len(value))
    return float(value)


def _spread(name: str, values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        f"{PREFIX}/{name}/mean": float(array.mean()),
        f"{PREFIX}/{name}/min": float(array.min()),
        f"{PREFIX}/{name}/p50": float(np.median(array)),
        f"{PREFIX}/{name}/max": float(array.max()),
    }


def _has_loop_fields(record: Mapping[str, Any]) -> bool:
    return "stop_reason" in record and record["stop_reason"] is not None


def dialogue_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The ``dialogue/…`` scalars of one step's trajectories (see README, "Training metrics").

    Records without agent-loop fields (a row served by another loop) are left out; no such record, no
    metrics. Accuracy per NExT-QA group appears only for the groups the step's rows carry.
    """
    rows = [record for record in records if _has_loop_fields(record)]
    if not rows:
        return {}
    metrics: dict[str, float] = {}
    for name, key in DISTRIBUTIONS.items():
        metrics.update(_spread(name, [_count(row.get(key, 0)) for row in rows]))
    for name, key in MEANS.items():
        metrics[f"{PREFIX}/{name}/mean"] = float(np.mean([_count(row.get(key, 0)) for row in rows]))
    metrics[f"{PREFIX}/request_share"] = float(
        np.mean([_count(row.get("requested_timestamps", [])) > 0 for row in rows])
    )
    metrics[f"{PREFIX}/parseable_turn_share"] = _parseable_turn_share(rows)
    for reason in StopReason:
        metrics[f"{PREFIX}/stop/{reason.value}"] = float(np.mean([row["stop_reason"] == reason.value for row in rows]))
    env = [float(row.get("env_seconds") or 0.0) for row in rows]
    metrics[f"{PREFIX}/env_seconds/mean"] = float(np.mean(env))
    metrics[f"{PREFIX}/env_seconds/max"] = float(np.max(env))
    metrics.update(_distances(rows))
    metrics.update(_accuracy(rows))
    return metrics


def _parseable_turn_share(rows: Sequence[Mapping[str, Any]]) -> float:
    """Share of assistant turns the protocol accepted.

    A turn that is invalid or cut at ``max_tokens`` ends its dialogue, so a dialogue holds at most one, its last.
    """
    turns = sum(_count(row.get("assistant_turns", 0)) for row in rows)
    bad = sum(row["stop_reason"] in (StopReason.INVALID_TURN.value, StopReason.TRUNCATED.value) for row in rows)
    return float((turns - bad) / turns) if turns else 0.0


def _distances(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How far requests land from frames already seen, over every requested timestamp of the step."""
    seconds: list[float] = []
    fractions: list[float] = []
    for row in rows:
        distances = [float(d) for d in row.get("request_distances") or []]
        seconds += distances
        duration = row.get("video_duration")
        if duration and duration > 0 and not math.isnan(duration):
            fractions += [d / duration for d in distances]
    if not seconds:
        return {}
    metrics = {
        f"{PREFIX}/request_distance_s/mean": float(np.mean(seconds)),
        f"{PREFIX}/request_distance_s/p50": float(np.median(seconds)),
        f"{PREFIX}/request_distance_s/max": float(np.max(seconds)),
    }
    if fractions:
        metrics[f"{PREFIX}/request_distance_frac/mean"] = float(np.mean(fractions))
    return metrics


def _accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The reward (verl logs the same number as ``critic/score/mean``) and accuracy, overall and per group."""
    metrics: dict[str, float] = {}
    scores = [float(row["score"]) for row in rows if row.get("score") is not None]
    if scores:
        metrics[f"{PREFIX}/score/mean"] = float(np.mean(scores))
    scored = [row for row in rows if row.get("accuracy") is not None]
    if not scored:
        return metrics
    metrics[f"{PREFIX}/accuracy/mean"] = float(np.mean([float(row["accuracy"]) for row in scored]))
    for group in GROUP_ORDER:
        members = [float(row["accuracy"]) for row in scored if question_group(row.get("question_type")) == group]
        if members:
            metrics[f"{PREFIX}/accuracy/{group}"] = float(np.mean(members))
    return metrics
