"""Every kind of bad model turn, through the real agent loop: each has one defined, counted outcome.

One table drives it: a scripted policy writes the turns, and the loop's ``extra_fields`` (what the rollout
dumps and the reward see) must show the documented stop reason and counters, and the reward must score
them as documented. The outcomes are tabled in :mod:`sparse_video_r1.env.dialogue` and
:mod:`sparse_video_r1.env.protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_agent_loop import ANSWER, FPS, image_pad_runs, make_loop, row, run_loop
from test_reward import verl_extra_info
from verl.utils.tokenizer import hf_processor, hf_tokenizer
from verl.workers.rollout.replica import TokenOutput

from sparse_video_r1.env.dialogue import ENVIRONMENT_FAILURES, UNAVAILABLE_TEXT, StopReason
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.synthetic.videos import read_frame_index
from sparse_video_r1.training.reward import compute_score

#: The video of every case: 60 frames at 10 fps (6 s); the 2 initial frames are 15 and 45 (1.5 s, 4.5 s).
NUM_FRAMES = 60
INITIAL = [15, 45]
COUNTERS = ("clamped_timestamps", "repeated_timestamps", "over_budget_timestamps")


@dataclass(frozen=True)
class Case:
    """A script of assistant turns and what the loop must record for it (counters default to 0)."""

    script: list[str]
    stop: StopReason
    turns: int
    invalid_reason: str | None = None
    frames: list[int] = field(default_factory=lambda: list(INITIAL))
    counters: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    question: str = "What colour?"
    server: str = "scripted"


def frames_tag(*timestamps: object) -> str:
    return "<think>I need more.</think><frames>" + ", ".join(str(t) for t in timestamps) + "</frames>"


CASES: dict[str, Case] = {
    "empty turn": Case([""], StopReason.INVALID_TURN, 1, "empty"),
    "whitespace turn": Case(["  \n "], StopReason.INVALID_TURN, 1, "empty"),
    "no tags": Case(["I think it is C."], StopReason.INVALID_TURN, 1, "no_action"),
    "unclosed think": Case(["<think>hmm, let me see"], StopReason.INVALID_TURN, 1, "unclosed_tag"),
    "answer and request": Case(
        ["<answer>C</answer><frames>1</frames>"], StopReason.INVALID_TURN, 1, "conflicting_actions"
    ),
    "two answers": Case(["<answer>A</answer><answer>B</answer>"], StopReason.INVALID_TURN, 1, "multiple_answers"),
    "two requests": Case(["<frames>1</frames><frames>2</frames>"], StopReason.INVALID_TURN, 1, "multiple_requests"),
    "answer not an option": Case(["<answer>Z</answer>"], StopReason.INVALID_TURN, 1, "bad_answer"),
    "empty request": Case(["<frames> , </frames>"], StopReason.INVALID_TURN, 1, "empty_request"),
    "NaN timestamp": Case([frames_tag("nan")], StopReason.INVALID_TURN, 1, "bad_timestamps"),
    "infinite timestamp": Case([frames_tag("1e309")], StopReason.INVALID_TURN, 1, "bad_timestamps"),
    "clock past float range": Case([frames_tag("9" * 400 + ":00:00")], StopReason.INVALID_TURN, 1, "bad_timestamps"),
    "absurdly many timestamps": Case(
        [frames_tag(*(i / 20 for i in range(65)))], StopReason.INVALID_TURN, 1, "too_many_timestamps"
    ),
    "negative timestamp": Case(
        [frames_tag(-3), ANSWER], StopReason.ANSWERED, 2, frames=[*INITIAL, 0], counters={"clamped_timestamps": 1}
    ),
    "past the end": Case(
        [frames_tag(99), ANSWER], StopReason.ANSWERED, 2, frames=[*INITIAL, 59], counters={"clamped_timestamps": 1}
    ),
    "huge finite timestamp": Case(
        [frames_tag("1e308"), ANSWER], StopReason.ANSWERED, 2, frames=[*INITIAL, 59], counters={"clamped_timestamps": 1}
    ),
    # 40 distinct frames 0..39: 15 was shown, 2 of the other 39 fit the per-request budget.
    "many timestamps within the parse limit": Case(
        [frames_tag(*(i / FPS for i in range(40))), ANSWER],
        StopReason.ANSWERED,
        2,
        frames=[*INITIAL, 0, 1],
        counters={"repeated_timestamps": 1, "over_budget_timestamps": 37},
    ),
    "frames already shown": Case(
        [frames_tag(1.5, 4.55), ANSWER], StopReason.ANSWERED, 2, counters={"repeated_timestamps": 2}
    ),
    "one frame asked twice": Case(
        [frames_tag(2.0, 2.05), ANSWER],
        StopReason.ANSWERED,
        2,
        frames=[*INITIAL, 20],
        counters={"repeated_timestamps": 1},
    ),
    "request after the budget is spent": Case(
        [frames_tag(0.5, 1.0), frames_tag(2.0, 3.0), ANSWER],
        StopReason.ANSWERED,
        3,
        frames=[*INITIAL, 5, 10],
        counters={"over_budget_timestamps": 2},
        config={"max_total_frames": 4},
    ),
    "request on the last turn": Case(
        [frames_tag(2.0), frames_tag(3.0)], StopReason.MAX_TURNS, 2, frames=[*INITIAL, 20], config={"max_turns": 2}
    ),
    "cut off by max tokens": Case(
        ["<think>" + "very long thoughts " * 80], StopReason.TRUNCATED, 1, config={"max_tokens_per_turn": 32}
    ),
    "server returns no tokens": Case([""], StopReason.TRUNCATED, 1, server="no_tokens"),
    "next frames would overflow the context": Case(
        [frames_tag(2.0, 3.5), ANSWER], StopReason.CONTEXT_LIMIT, 1, config={"response_length": 96}
    ),
    "opening prompt over the prompt length": Case(
        [ANSWER], StopReason.CONTEXT_LIMIT, 0, frames=[], config={"prompt_length": 400}
    ),
    "question too long even without frames": Case(
        [ANSWER], StopReason.CONTEXT_LIMIT, 0, frames=[], question="why " * 1200
    ),
    "valid answer": Case([ANSWER], StopReason.ANSWERED, 1),
}


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path):
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


class NoTokensServer(ScriptedServer):
    """A server whose generation comes back empty (an aborted request), not even an end-of-turn token."""

    async def generate(self, request_id: str, **kwargs: Any) -> TokenOutput:
        output = await super().generate(request_id, **kwargs)
        return output.model_copy(update={"token_ids": [], "log_probs": [] if output.log_probs is not None else None})


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_turn_has_a_recorded_counted_outcome(
    name: str, tiny_model_dir: Path, tokenizer_and_processor, make_video
) -> None:
    case = CASES[name]
    tokenizer, _ = tokenizer_and_processor
    server_cls = NoTokensServer if case.server == "no_tokens" else ScriptedServer
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server_cls(tokenizer, case.script), **case.config)
    sample = row(make_video(num_frames=NUM_FRAMES, fps=FPS))
    sample["extra_info"]["question"] = case.question
    (output,) = run_loop(loop, [sample])
    fields = output.extra_fields

    assert fields["stop_reason"] == case.stop.value
    assert fields["assistant_turns"] == case.turns
    assert fields["invalid_reason"] == case.invalid_reason
    assert fields["invalid_turns"] == int(case.invalid_reason is not None)
    assert fields["failure_reason"] is None
    assert {key: fields[key] for key in COUNTERS} == {key: case.counters.get(key, 0) for key in COUNTERS}
    assert fields["frames_used"] == len(case.frames)
    images = output.multi_modal_data["images"]
    if case.frames:
        assert [read_frame_index(image) for image in images] == case.frames
    else:  # nothing fitted the prompt: the gradient-free placeholder (one blank frame) stands in
        assert len(images) == 1 and sum(output.response_mask) == 0
    assert image_pad_runs(tokenizer, output.prompt_ids + output.response_ids) == len(images)
    assert len(output.prompt_ids) <= loop.rollout_config.prompt_length
    assert len(output.response_ids) == len(output.response_mask) <= loop.response_length

    score = compute_score("nextqa", "", "C", verl_extra_info(sample["extra_info"], fields, output.num_turns))
    answered = case.stop is StopReason.ANSWERED
    assert (score["accuracy"], score["format"]) == (float(answered), float(answered))


def test_a_question_too_long_for_any_prompt_gets_the_placeholder_without_it(
    tiny_model_dir: Path, tokenizer_and_processor, make_video
) -> None:
    tokenizer, _ = tokenizer_and_processor
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, [ANSWER]))
    sample = row(make_video(num_frames=NUM_FRAMES, fps=FPS))
    sample["extra_info"]["question"] = CASES["question too long even without frames"].question
    (output,) = run_loop(loop, [sample])
    assert UNAVAILABLE_TEXT in tokenizer.decode(output.prompt_ids)
    assert output.response_mask == [0]


def test_the_table_covers_every_way_the_model_can_end_a_dialogue() -> None:
    assert {case.stop for case in CASES.values()} == set(StopReason) - ENVIRONMENT_FAILURES
