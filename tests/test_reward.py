"""Tests of the verl reward function, fed what verl's reward loop actually passes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.env.protocol import followup_user_content
from sparse_video_r1.training.reward import compute_score, normalize_ground_truth

STOPS = {f"stop/{reason.value}" for reason in StopReason}
KEYS = {"score", "accuracy", "format", "frame_penalty", "frames_used", "assistant_turns", "requested_frames"} | STOPS


def stops(reason: str | None) -> dict[str, float]:
    """The stop indicators compute_score returns when the dialogue ended with ``reason``."""
    return {key: float(key == f"stop/{reason}") for key in STOPS}


class _Frame:
    def __init__(self, timestamp: float) -> None:
        self.timestamp = timestamp
        self.image = Image.new("RGB", (28, 28))


def decoded_response(*turns: str) -> str:
    """What ``tokenizer.decode(response_ids, skip_special_tokens=True)`` yields for a Qwen chat dialogue.

    The response holds every assistant turn and the environment's user turns between them; the
    ``<|im_start|>``/``<|im_end|>``/vision tokens are special and vanish, leaving the role names.
    """
    parts = [turns[0]]
    for turn in turns[1:]:
        blocks = followup_user_content(frames=[_Frame(5.0), _Frame(9.5)], notes=[], frames_left=4, turns_left=2)
        user_text = "".join(block["text"] for block in blocks if block["type"] == "text")
        parts.append(f"\nuser\n{user_text}\nassistant\n{turn}")
    return "".join(parts)


def verl_extra_info(row_extra_info: dict, loop_fields: dict | None, num_turns: int) -> dict:
    """Mirror of ``NaiveRewardManager.run_single`` (verl 0.9.1, reward_loop/reward_manager/naive.py)."""
    extra_info = dict(row_extra_info)
    tool_extra_fields = loop_fields
    if tool_extra_fields is not None:
        extra_info.update(tool_extra_fields.items())
    extra_info["num_turns"] = num_turns
    extra_info["rollout_reward_scores"] = {}
    return extra_info


ROW = {"index": 7, "split": "train", "video": "clip.mp4"}
REQUEST_THEN_ANSWER = decoded_response(
    "<think>Need the middle.</think>\n<frames>5, 9.5</frames>", "<think>The cup is red.</think>\n<answer>B</answer>"
)


def loop_fields(**overrides: Any) -> dict:
    fields = {"stop_reason": "answered", "frames_used": 6, "invalid_turns": 0, "predicted_answer": "B"}
    fields |= {"assistant_turns": 2, "requested_frames": 2}
    if "answer" in overrides:
        overrides["predicted_answer"] = overrides.pop("answer")
    return fields | overrides


def test_correct_answer_with_frame_cost() -> None:
    extra = verl_extra_info(ROW, loop_fields(), num_turns=5)
    result = compute_score("videomme", REQUEST_THEN_ANSWER, "B", extra, frame_cost=0.01)
    assert result == pytest.approx(
        {
            "score": 1.0 + 0.1 - 0.06,
            "accuracy": 1.0,
            "format": 1.0,
            "frame_penalty": 0.06,
            "frames_used": 6.0,
            "assistant_turns": 2.0,
            "requested_frames": 2.0,
        }
        | stops("answered")
    )
    assert all(type(value) is float for value in result.values())


def test_weights_come_from_reward_kwargs() -> None:
    extra = verl_extra_info(ROW, loop_fields(frames_used=10), num_turns=5)
    result = compute_score("d", REQUEST_THEN_ANSWER, "B", extra, accuracy_weight=2.0, format_weight=0.5, frame_cost=0.1)
    assert result["score"] == pytest.approx(2.0 + 0.5 - 1.0)


def test_wrong_answer_keeps_format_and_pays_frames() -> None:
    extra = verl_extra_info(ROW, loop_fields(answer="C"), num_turns=5)
    result = compute_score("d", REQUEST_THEN_ANSWER, "B", extra, frame_cost=0.02)
    assert (result["accuracy"], result["format"]) == (0.0, 1.0)
    assert result["score"] == pytest.approx(0.1 - 0.12)


def test_loop_answer_wins_over_response_text() -> None:
    # The loop's parse is the record; a response with a different final tag cannot override it.
    extra = verl_extra_info(ROW, loop_fields(answer="A"), num_turns=3)
    assert compute_score("d", "<answer>B</answer>", "B", extra)["accuracy"] == 0.0


@pytest.mark.parametrize(
    "fields",
    [
        loop_fields(invalid_turns=1),
        loop_fields(stop_reason="max_turns", answer=None),
        loop_fields(stop_reason="max_tokens", answer=None),
    ],
)
def test_format_needs_a_clean_answered_dialogue(fields: dict) -> None:
    extra = verl_extra_info(ROW, fields, num_turns=5)
    assert compute_score("d", REQUEST_THEN_ANSWER, "B", extra)["format"] == 0.0


def test_invalid_turn_then_correct_answer_keeps_accuracy() -> None:
    response = decoded_response("<think>hmm</think> I need more frames.", "<think>ok</think><answer>B</answer>")
    extra = verl_extra_info(ROW, loop_fields(invalid_turns=1, frames_used=4), num_turns=5)
    result = compute_score("d", response, "B", extra)
    assert (result["accuracy"], result["format"], result["score"]) == (1.0, 0.0, 1.0)


def test_no_answer_scores_zero_accuracy() -> None:
    response = decoded_response("<think>x</think><frames>1</frames>", "<think>still unsure, maybe <answer>B")
    extra = verl_extra_info(ROW, loop_fields(stop_reason="max_turns", answer=None, frames_used=16), num_turns=5)
    result = compute_score("d", response, "B", extra, frame_cost=0.01)
    assert result == pytest.approx(
        {"score": -0.16, "accuracy": 0.0, "format": 0.0, "frame_penalty": 0.16, "frames_used": 16.0}
        | {"assistant_turns": 2.0, "requested_frames": 2.0}
        | stops("max_turns")
    )


def test_dataset_answer_key_is_not_mistaken_for_the_models() -> None:
    # Preprocessors often store the gold answer as extra_info["answer"]; without loop fields it must be ignored.
    extra = verl_extra_info(ROW | {"answer": "B"}, None, num_turns=2)
    result = compute_score("d", "<think>x</think><answer>C</answer>", "B", extra)
    assert (result["accuracy"], result["format"], result["frames_used"]) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("response", "accuracy", "fmt"),
    [
        (REQUEST_THEN_ANSWER, 1.0, 1.0),
        ("<answer>(b) a red cup</answer>", 1.0, 1.0),
        ("<think>B?</think> no tag", 0.0, 0.0),
        ("<think>maybe <answer>B</answer></think>", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_without_loop_fields_parses_the_response(response: str, accuracy: float, fmt: float) -> None:
    for extra in (None, {}, verl_extra_info(ROW, None, num_turns=2)):
        result = compute_score("d", response, "B", extra)
        assert (result["accuracy"], result["format"], result["frame_penalty"]) == (accuracy, fmt, 0.0)


@pytest.mark.parametrize("truth", ["B", "b", " B ", 1, np.int64(1), "1"])
def test_ground_truth_forms(truth: Any) -> None:
    assert normalize_ground_truth(truth) == "B"
    assert compute_score("d", REQUEST_THEN_ANSWER, truth, verl_extra_info(ROW, loop_fields(), 5))["accuracy"] == 1.0


@pytest.mark.parametrize("truth", ["F", "", "AB", "5", "-1", 5, -1, True, None, 1.0, "١"])
def test_bad_ground_truth_is_named(truth: Any) -> None:
    with pytest.raises(ValueError, match="ground_truth"):
        compute_score("d", REQUEST_THEN_ANSWER, truth, verl_extra_info(ROW, loop_fields(), 5))


def test_unknown_reward_kwarg_is_an_error() -> None:
    with pytest.raises(ValueError, match="frame_costs"):
        compute_score("d", REQUEST_THEN_ANSWER, "B", None, frame_costs=0.1)


def test_kwargs_verl_injects_for_reward_models_are_ignored() -> None:
    result = compute_score(
        "d", REQUEST_THEN_ANSWER, "B", None, reward_router_address="10.0.0.1:80", reward_model_tokenizer=object()
    )
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize(
    "fields",
    [
        loop_fields(frames_used=None),
        loop_fields(frames_used=-1),
        loop_fields(invalid_turns="0"),
        loop_fields(answer="b"),
        loop_fields(answer=1),
        {"stop_reason": "answered"},
    ],
)
def test_malformed_loop_fields_are_loop_bugs(fields: dict) -> None:
    with pytest.raises(ValueError, match="agent-loop field"):
        compute_score("d", REQUEST_THEN_ANSWER, "B", verl_extra_info(ROW, fields, 5))


@pytest.mark.parametrize("text", ["<answer>", "</think></think><answer>Z", "\x00<frames>nan</frames>", "<" * 1000])
def test_weird_model_text_never_raises(text: str) -> None:
    result = compute_score("d", text, "A", None)
    assert set(result) == KEYS and result["accuracy"] == 0.0


class _FakeTokenizer:
    """Decodes to a fixed string: the test is about what verl does around the decode, not the decode."""

    def __init__(self, text: str) -> None:
        self.text = text

    def decode(self, ids: torch.Tensor, skip_special_tokens: bool = False) -> str:
        assert skip_special_tokens
        return self.text


def test_real_verl_reward_loop_call() -> None:
    """Drive verl's own NaiveRewardManager end to end, loading us by the config path training uses."""
    omegaconf = pytest.importorskip("omegaconf")
    protocol = pytest.importorskip("verl.protocol")
    naive = pytest.importorskip("verl.experimental.reward_loop.reward_manager.naive")
    ppo_reward = pytest.importorskip("verl.trainer.ppo.reward")

    config = omegaconf.OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://sparse_video_r1.training.reward",
                    "name": "compute_score",
                    "reward_kwargs": {"frame_cost": 0.01, "format_weight": 0.2},
                }
            }
        }
    )
    manager = naive.NaiveRewardManager(
        config, _FakeTokenizer(REQUEST_THEN_ANSWER), ppo_reward.get_custom_reward_fn(config)
    )
    # The agent loop's rollout-time reward call builds this row (agent_loop.py, _compute_score).
    data = protocol.DataProto.from_dict(
        tensors={
            "responses": torch.ones(1, 8, dtype=torch.long),
            "attention_mask": torch.ones(1, 12, dtype=torch.long),
        },
        non_tensors={
            "data_source": np.array(["videomme"]),
            "reward_model": np.array([{"ground_truth": "B", "style": "rule"}], dtype=object),
            "extra_info": np.array([dict(ROW)], dtype=object),
            "__num_turns__": np.array([5]),
            "tool_extra_fields": np.array([loop_fields(frames_used=8)], dtype=object),
        },
    )
    result = manager.loop.run_until_complete(manager.run_single(data))
    assert result["reward_score"] == pytest.approx(1.0 + 0.2 - 0.08)
    assert set(result["reward_extra_info"]) == KEYS
    assert result["reward_extra_info"]["frames_used"] == 8.0


@pytest.mark.parametrize("reason", ["video_error", "decode_timeout", "error"])
def test_environment_failures_score_the_configured_failure_score(reason: str) -> None:
    extra = verl_extra_info(ROW, loop_fields(stop_reason=reason, answer=None, frames_used=0), num_turns=1)
    result = compute_score("d", "", "B", extra, failure_score=0.25)
    assert result["score"] == 0.25 and result["accuracy"] == 0.0 and result[f"stop/{reason}"] == 1.0


def test_a_model_failure_is_not_an_environment_failure() -> None:
    extra = verl_extra_info(ROW, loop_fields(stop_reason="invalid_turn", answer=None, invalid_turns=1), num_turns=2)
    result = compute_score("d", "<think>x</think>", "B", extra, failure_score=0.25, frame_cost=0.01)
    assert result["score"] == pytest.approx(-0.06)
