"""Training rollouts as dialogue records, written next to verl's ``trainer.rollout_data_dir`` dumps.

verl's own dump (``<rollout_data_dir>/<step>.jsonl``) holds each trajectory's decoded prompt and response
text, its score and, with the legacy trainer, the reward's extra keys: not the video, nor where each turn
starts, nor the timestamps of the frames shown. The viewer needs all three, so the training hooks of
:mod:`sparse_video_r1.training.verl_metrics` add ``<rollout_data_dir>/dialogues/<step>.jsonl``: one
:func:`rollout_record` per trajectory, keyed by the same ``uid`` verl's v1 dump carries.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

from sparse_video_r1.training.standalone import image_runs, split_turns

logger = logging.getLogger(__name__)

#: Sub-folder of ``trainer.rollout_data_dir`` holding the dialogue records, one JSONL file per step.
DIALOGUES_DIR = "dialogues"

#: Fields copied from the row's ``extra_info`` and from the agent loop's ``extra_fields``.
ROW_FIELDS = ("qid", "video_path", "question", "options", "answer", "question_type")
LOOP_FIELDS = (
    "stop_reason",
    "predicted_answer",
    "frames_used",
    "assistant_turns",
    "requested_frames",
    "shown_timestamps",
    "requested_timestamps",
    "request_distances",
    "clamped_timestamps",
    "repeated_timestamps",
    "over_budget_timestamps",
    "invalid_reason",
    "failure_reason",
    "video_duration",
    "env_seconds",
)


def response_turns(
    tokenizer: Any, response_ids: Sequence[int], response_mask: Sequence[int], image_token_id: int
) -> list[dict[str, Any]]:
    """The response split into model / environment turns, each with its text and how many frames it showed."""
    output = AgentLoopOutput(
        prompt_ids=[], response_ids=list(response_ids), response_mask=list(response_mask), metrics=AgentLoopMetrics()
    )
    turns = split_turns(tokenizer, output)
    bounds = [0] + [i for i in range(1, len(response_mask)) if response_mask[i] != response_mask[i - 1]]
    bounds.append(len(response_mask))
    segments = [list(response_ids[start:end]) for start, end in itertools.pairwise(bounds)]
    return [
        {"speaker": turn.speaker, "text": turn.text, "frames": image_runs(segment, image_token_id)}
        for turn, segment in zip(turns, segments, strict=True)
    ]


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values; NaN as null."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def rollout_record(
    uid: str,
    step: int,
    loop_fields: Mapping[str, Any],
    reward_fields: Mapping[str, Any],
    extra_info: Mapping[str, Any],
    turns: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the viewer shows of one training trajectory, as JSON-ready values."""
    record: dict[str, Any] = {"uid": uid, "step": step}
    record.update({key: _plain(extra_info.get(key)) for key in ROW_FIELDS})
    record.update({key: _plain(loop_fields.get(key)) for key in LOOP_FIELDS})
    record["score"] = _plain(reward_fields.get("score"))
    record["accuracy"] = _plain(reward_fields.get("accuracy"))
    record["turns"] = turns
    return record


def dialogues_path(rollout_data_dir: str | Path, step: int) -> Path:
    return Path(rollout_data_dir) / DIALOGUES_DIR / f"{step}.jsonl"


def write_records(
    rollout_data_dir: str | Path, step: int, records: Sequence[Mapping[str, Any]], *, append: bool = False
) -> Path:
    """Write one step's records, replacing an older file (a resumed run) unless ``append`` (a later part of a step
    that an async trainer samples in several parts)."""
    path = dialogues_path(rollout_data_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d dialogue records to %s", len(records), path)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a torn last line (a run killed mid-write) is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def steps(rollout_data_dir: str | Path) -> list[int]:
    """Steps that have dialogue records, ascending."""
    folder = Path(rollout_data_dir) / DIALOGUES_DIR
    return sorted(int(path.stem) for path in folder.glob("*.jsonl") if path.stem.isdigit())


def read_step(rollout_data_dir: str | Path, step: int) -> list[dict[str, Any]]:
    """One step's dialogue records, with verl's own dump score (``verl_score``) where its uid matches."""
    records = read_jsonl(dialogues_path(rollout_data_dir, step))
    verl_dump = Path(rollout_data_dir) / f"{step}.jsonl"
    if verl_dump.exists():
        scores = {row["uid"]: row.get("score") for row in read_jsonl(verl_dump) if "uid" in row}
        for record in records:
            if record["uid"] in scores:
                record["verl_score"] = scores[record["uid"]]
    return records
