"""verl custom reward: right answer, clean format, few frames.

Configure with ``reward.custom_reward_function.path=pkg://sparse_video_r1.training.reward``,
``reward.custom_reward_function.name=compute_score`` and the :class:`~sparse_video_r1.env.config.RewardConfig`
fields under ``reward.custom_reward_function.reward_kwargs``.

How verl calls it (``verl/experimental/reward_loop/reward_manager/naive.py``, ``run_single``):
``solution_str`` is the whole decoded response, i.e. every assistant turn with the environment's user
turns between them (special tokens skipped); ``extra_info`` is the dataset row's ``extra_info`` updated
*in place, at top level* with the agent loop's ``AgentLoopOutput.extra_fields`` (shipped as the
``tool_extra_fields`` column) plus ``num_turns`` and ``rollout_reward_scores``. Our agent loop's fields
are therefore plain keys of ``extra_info``: ``stop_reason``, ``frames_used``, ``invalid_turns``,
``answer``. verl's older, non-reward-loop managers pass no loop fields; then the answer is parsed from
``solution_str`` and frames are not charged.
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sparse_video_r1.env.config import RewardConfig, from_mapping
from sparse_video_r1.env.dialogue import ENVIRONMENT_FAILURES, StopReason
from sparse_video_r1.env.protocol import OPTION_LETTERS, parse_final_answer

logger = logging.getLogger(__name__)

#: Keyword arguments verl's reward managers add on their own when a reward model is configured; they
#: are not RewardConfig fields, so they must not trip the unknown-key check.
_VERL_INJECTED_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})

#: Present in ``extra_info`` only when our agent loop produced the rollout. The key ``answer`` alone
#: would not do: dataset preprocessors often store the gold answer under ``extra_info["answer"]``.
_LOOP_MARKER = "stop_reason"
_ANSWERED = "answered"
_FAILURES = frozenset(reason.value for reason in ENVIRONMENT_FAILURES)


@dataclass(frozen=True)
class DialogueOutcome:
    """What the reward needs to know about how a rollout ended."""

    answer: str | None
    well_formed: bool
    frames_used: int
    assistant_turns: int = 0
    requested_frames: int = 0
    stop_reason: str | None = None


def normalize_ground_truth(ground_truth: Any) -> str:
    """The gold option letter from ``"B"``/``"b"``, ``1`` or ``"1"``; ValueError naming anything else."""
    if isinstance(ground_truth, numbers.Integral) and not isinstance(ground_truth, bool):
        index = int(ground_truth)
        if 0 <= index < len(OPTION_LETTERS):
            return OPTION_LETTERS[index]
    elif isinstance(ground_truth, str):
        text = ground_truth.strip()
        if len(text) == 1 and text.upper() in OPTION_LETTERS:
            return text.upper()
        if text.isascii() and text.isdigit() and int(text) < len(OPTION_LETTERS):
            return OPTION_LETTERS[int(text)]
    raise ValueError(
        f"bad ground_truth {ground_truth!r}: expected an option letter in {OPTION_LETTERS!r} "
        f"or an index 0..{len(OPTION_LETTERS) - 1}"
    )


def _loop_int(extra_info: Mapping[str, Any], key: str) -> int:
    """An integer field our agent loop wrote; a wrong type is a bug in the loop, not model noise."""
    value = extra_info.get(key)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"agent-loop field {key!r} must be a non-negative int, got {value!r}")
    return int(value)


def _loop_answer(extra_info: Mapping[str, Any]) -> str | None:
    value = extra_info.get("predicted_answer")
    if value is not None and (not isinstance(value, str) or value not in OPTION_LETTERS or len(value) != 1):
        raise ValueError(f"agent-loop field 'predicted_answer' must be an option letter or None, got {value!r}")
    return value


@functools.cache
def _warn_no_loop_fields() -> None:
    """Once per process: without loop fields the run silently loses its frame cost, so say so."""
    logger.warning(
        "extra_info has no agent-loop fields (%r missing): parsing the answer from the response and charging no frames",
        _LOOP_MARKER,
    )


def dialogue_outcome(solution_str: str, extra_info: Mapping[str, Any]) -> DialogueOutcome:
    """Prefer the agent loop's own record; fall back to parsing the decoded response."""
    if _LOOP_MARKER in extra_info:
        return DialogueOutcome(
            answer=_loop_answer(extra_info),
            well_formed=extra_info[_LOOP_MARKER] == _ANSWERED and _loop_int(extra_info, "invalid_turns") == 0,
            frames_used=_loop_int(extra_info, "frames_used"),
            assistant_turns=_loop_int(extra_info, "assistant_turns"),
            requested_frames=_loop_int(extra_info, "requested_frames"),
            stop_reason=str(extra_info[_LOOP_MARKER]),
        )
    _warn_no_loop_fields()
    answer = parse_final_answer(solution_str)
    return DialogueOutcome(answer=answer, well_formed=answer is not None, frames_used=0)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    **reward_kwargs: Any,
) -> dict[str, float]:
    """``score = accuracy_weight*accuracy + format_weight*format - frame_cost*frames_used``, or
    ``failure_score`` when the environment failed the sample (its video, a decode, an exception).

    Every term is returned too, under the same keys for every rollout, because verl logs each key of
    the dict and stacks them across the batch (and writes them into ``trainer.rollout_data_dir`` dumps).
    ``assistant_turns``, ``requested_frames`` and one ``stop/<reason>`` indicator per
    :class:`~sparse_video_r1.env.dialogue.StopReason` are not reward terms: they make the rollout dumps say how
    each dialogue went, and verl's validation metrics give the rate of every way a dialogue ends
    (``invalid_turn``, ``truncated``, ``video_error``...). Without agent-loop fields they are 0 (unknown).
    """
    config = from_mapping(
        RewardConfig, {key: value for key, value in reward_kwargs.items() if key not in _VERL_INJECTED_KWARGS}
    )
    truth = normalize_ground_truth(ground_truth)
    outcome = dialogue_outcome(solution_str, extra_info or {})
    accuracy = float(outcome.answer == truth)
    fmt = float(outcome.well_formed)
    frame_penalty = config.frame_cost * outcome.frames_used
    score = config.accuracy_weight * accuracy + config.format_weight * fmt - frame_penalty
    if outcome.stop_reason in _FAILURES:
        score = config.failure_score
    return {
        "score": float(score),
        "accuracy": accuracy,
        "format": fmt,
        "frame_penalty": float(frame_penalty),
        "frames_used": float(outcome.frames_used),
        "assistant_turns": float(outcome.assistant_turns),
        "requested_frames": float(outcome.requested_frames),
        **{f"stop/{reason.value}": float(outcome.stop_reason == reason.value) for reason in StopReason},
    }
