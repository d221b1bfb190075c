"""Tests of the dialogue format: every documented parse outcome, parser properties, and the prompt builders.

The property tests run ``SVR1_HYPOTHESIS_EXAMPLES`` examples each (300 by default, to keep the suite
fast). For a thorough run: ``SVR1_HYPOTHESIS_EXAMPLES=10000 python -m pytest tests/test_protocol.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sparse_video_r1.env.protocol import (
    INVALID_REASONS,
    MAX_PARSED_TIMESTAMPS,
    OPTION_LETTERS,
    Answer,
    FrameRequest,
    Invalid,
    answer_turn,
    followup_user_content,
    format_timestamp,
    initial_user_content,
    parse_final_answer,
    parse_timestamp,
    parse_turn,
    question_text,
    request_turn,
    system_prompt,
)

MAX_EXAMPLES = int(os.environ.get("SVR1_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None)
TAG = re.compile(r"</?(?:think|answer|frames)>", re.IGNORECASE)

# ---------------------------------------------------------------------------------------------------
# parse_turn: one case per row of the module docstring's table (and a few more).

ACCEPTED = [
    ("<think>The door opens at 3s.</think><answer>B</answer>", Answer("B")),
    ("  <answer>B</answer>  ", Answer("B")),
    ("\n<think>x</think>\n\n<answer>B</answer>\n", Answer("B")),
    ("<answer>B</answer> Hope that helps!", Answer("B")),
    ("<answer>b</answer>", Answer("B")),
    ("<answer>(B)</answer>", Answer("B")),
    ("<answer>(b)</answer>", Answer("B")),
    ("<answer>B.</answer>", Answer("B")),
    ("<answer>B)</answer>", Answer("B")),
    ("<answer>[B]</answer>", Answer("B")),
    ("<answer> B </answer>", Answer("B")),
    ("<answer>B) The red car</answer>", Answer("B")),
    ("<answer>B. The red car</answer>", Answer("B")),
    ("<answer>B The red car</answer>", Answer("B")),
    ("<answer>b) the red car</answer>", Answer("B")),
    ("<answer>Option B</answer>", Answer("B")),
    ("<answer>Answer: B</answer>", Answer("B")),
    ("<answer>The answer is (C)</answer>", Answer("C")),
    ("<ANSWER>E</ANSWER>", Answer("E")),
    ("<answer>B</answer><answer>B</answer>", Answer("B")),
    ("<think>maybe <answer>A</answer>?</think><answer>B</answer>", Answer("B")),
    ("<think>or <frames>1</frames></think><answer>B</answer>", Answer("B")),
    ("<think>a</think> <think>b <answer>A</answer></think><answer>B</answer>", Answer("B")),
    ("<think>outer <think>inner</think> <answer>B</answer>", Answer("B")),
    ("thinking <answer>A</answer> more</think><answer>B</answer>", Answer("B")),
    ("<frames>3.5, 12</frames>", FrameRequest((3.5, 12.0))),
    ("<think>need more</think>\n<frames>3.5, 12</frames>\nThanks.", FrameRequest((3.5, 12.0))),
    ("<frames>12s; 3.5 s 3.5sec</frames>", FrameRequest((3.5, 12.0))),
    ("<frames>1 second, 2 seconds, 3 secs</frames>", FrameRequest((1.0, 2.0, 3.0))),
    ("<frames>[1, 2.5 seconds]</frames>", FrameRequest((1.0, 2.5))),
    ("<frames>(4, 2)</frames>", FrameRequest((2.0, 4.0))),
    ("<frames>00:03.5, 1:02:03</frames>", FrameRequest((3.5, 3723.0))),
    ("<frames>75:30</frames>", FrameRequest((4530.0,))),
    ("<frames>-2, 1e4</frames>", FrameRequest((-2.0, 10000.0))),
    ("<frames>, 1,\n2 ;</frames>", FrameRequest((1.0, 2.0))),
    ("<frames>-0, 0</frames>", FrameRequest((0.0,))),
    ("<frames>.5 3.</frames>", FrameRequest((0.5, 3.0))),
    ("<FRAMES>7</FRAMES>", FrameRequest((7.0,))),
    ("<frames>" + ", ".join(str(i) for i in range(MAX_PARSED_TIMESTAMPS)) + "</frames>",
     FrameRequest(tuple(float(i) for i in range(MAX_PARSED_TIMESTAMPS)))),
]  # fmt: skip

REJECTED = [
    ("", "empty"),
    ("  \n\t ", "empty"),
    ("<think>I will answer B", "unclosed_tag"),
    ("<think>x</think><answer>B</answer><think>hmm", "unclosed_tag"),
    ("<answer>B", "unclosed_tag"),
    ("<frames>1, 2", "unclosed_tag"),
    ("<answer>A</answer><frames>1", "unclosed_tag"),
    ("B</answer>", "stray_closing_tag"),
    ("<answer>B</answer></answer>", "stray_closing_tag"),
    ("1, 2</frames>", "stray_closing_tag"),
    ("<answer><frames>1</frames></answer>", "nested_tags"),
    ("<answer>A<answer>B</answer></answer>", "nested_tags"),
    ("<answer>B</frames>", "nested_tags"),
    ("The answer is B.", "no_action"),
    ("<think>I pick <answer>B</answer></think>", "no_action"),
    ("<answer>B</answer></think>", "no_action"),
    ("<answer>B</answer><frames>1</frames>", "conflicting_actions"),
    ("<frames>1</frames> <answer>B</answer>", "conflicting_actions"),
    ("<answer>A</answer><answer>B</answer>", "multiple_answers"),
    ("<answer>Z</answer>", "bad_answer"),
    ("<answer></answer>", "bad_answer"),
    ("<answer>  </answer>", "bad_answer"),
    ("<answer>a dog</answer>", "bad_answer"),
    ("<answer>Apple</answer>", "bad_answer"),
    ("<answer>AB</answer>", "bad_answer"),
    ("<answer>I think B</answer>", "bad_answer"),
    ("<answer>1</answer>", "bad_answer"),
    ("<answer>B</answer><answer>maybe</answer>", "bad_answer"),
    ("<frames>1</frames><frames>2</frames>", "multiple_requests"),
    ("<frames>1</frames><frames>1</frames>", "multiple_requests"),
    ("<frames></frames>", "empty_request"),
    ("<frames> , ; </frames>", "empty_request"),
    ("<frames>[]</frames>", "empty_request"),
    ("<frames>1, soon</frames>", "bad_timestamps"),
    ("<frames>nan</frames>", "bad_timestamps"),
    ("<frames>inf</frames>", "bad_timestamps"),
    ("<frames>-inf, 2</frames>", "bad_timestamps"),
    ("<frames>1e999</frames>", "bad_timestamps"),
    ("<frames>1:75</frames>", "bad_timestamps"),
    ("<frames>1:60:00</frames>", "bad_timestamps"),
    ("<frames>3.5s-5s</frames>", "bad_timestamps"),
    ("<frames>1_000</frames>", "bad_timestamps"),
    ("<frames>\u0663</frames>", "bad_timestamps"),
    ("<frames>0x10</frames>", "bad_timestamps"),
    ("<frames>3.5 ms</frames>", "bad_timestamps"),
    ("<frames>" + "9" * 400 + ":00:00</frames>", "bad_timestamps"),  # hours past float range (found by fuzzing)
    ("<frames>" + " ".join("1" for _ in range(MAX_PARSED_TIMESTAMPS + 1)) + "</frames>", "too_many_timestamps"),
    # Two faults: the first check in the documented order wins.
    ("<answer>B</answer></frames><frames>", "stray_closing_tag"),
    ("<frames>nan</frames><answer>Z</answer>", "conflicting_actions"),
    ("<frames>nan</frames><frames>1</frames>", "multiple_requests"),
    ("<frames>" + "nan " * (MAX_PARSED_TIMESTAMPS + 1) + "</frames>", "too_many_timestamps"),
    ("<answer>Z</answer><answer>A</answer>", "bad_answer"),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_parse_turn_accepts(text: str, expected: Answer | FrameRequest) -> None:
    assert parse_turn(text) == expected


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_parse_turn_rejects(text: str, reason: str) -> None:
    assert parse_turn(text) == Invalid(reason)


def test_every_invalid_reason_is_exercised() -> None:
    assert {reason for _, reason in REJECTED} == set(INVALID_REASONS)


@pytest.mark.parametrize(("num_options", "letter", "ok"), [(4, "D", True), (4, "E", False), (2, "C", False)])
def test_answer_range_follows_num_options(num_options: int, letter: str, ok: bool) -> None:
    result = parse_turn(f"<answer>{letter}</answer>", num_options=num_options)
    assert result == (Answer(letter) if ok else Invalid("bad_answer"))


@pytest.mark.parametrize("num_options", [0, 6])
def test_num_options_out_of_range_is_a_caller_error(num_options: int) -> None:
    with pytest.raises(ValueError, match="num_options"):
        parse_turn("<answer>A</answer>", num_options=num_options)


def test_answer_index_and_validation() -> None:
    assert [Answer(letter).index for letter in OPTION_LETTERS] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        Answer("F")
    with pytest.raises(ValueError):
        Invalid("made_up")


@pytest.mark.parametrize(
    ("token", "seconds"),
    [("3.5", 3.5), ("3.5s", 3.5), ("3.5 s", 3.5), ("3.5 sec", 3.5), (" 3.5 SECONDS ", 3.5), ("00:03.5", 3.5),
     ("1:02:03", 3723.0), ("2:05", 125.0), ("-1.5", -1.5), ("+2", 2.0), ("1e2s", 100.0)],
)  # fmt: skip
def test_parse_timestamp(token: str, seconds: float) -> None:
    assert parse_timestamp(token) == seconds


@pytest.mark.parametrize(
    "token", ["", "s", "abc", "nan", "inf", "1e999", "1:2:3:4", "1::2", "1,5", "3 4", "--1", "9" * 400 + ":00"]
)
def test_parse_timestamp_rejects_junk(token: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(token)


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("<think>x</think><answer>C</answer>", "C"),
        (
            "<think>x</think><frames>1</frames>\nuser\nFrame at 1.0s: \nassistant\n<think>y</think><answer>D</answer>",
            "D",
        ),
        ("<answer>A</answer> then <answer>B</answer>", "B"),
        ("<answer>A</answer><think>no, <answer>C</answer></think>", "A"),
        ("<answer>A</answer><think>truncated <answer>C</answer>", "A"),
        ("<answer>(e)</answer>", "E"),
        ("<frames>1, 2</frames>", None),
        ("<answer>Z</answer>", None),
        ("<answer>A</answer><answer>junk</answer>", None),
        ("", None),
    ],
)
def test_parse_final_answer(response: str, letter: str | None) -> None:
    assert parse_final_answer(response) == letter


def test_parse_final_answer_respects_num_options() -> None:
    assert parse_final_answer("<answer>D</answer>", num_options=3) is None


# ---------------------------------------------------------------------------------------------------
# Properties

NO_TAG_TEXT = st.text(max_size=60).filter(lambda s: TAG.search(s) is None)
SEPARATORS = st.sampled_from([",", ", ", ";", "; ", " ", "  ", "\n", " , ", ",\t"])
UNITS = st.sampled_from(["", "s", " s", "sec", " sec", "secs", " seconds", "S"])


def _clock(milliseconds: int) -> str:
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:06.3f}"
    return f"{hours}:{minutes:02d}:{seconds}" if hours else f"{minutes:02d}:{seconds}"


@st.composite
def frame_requests(draw: st.DrawFn) -> tuple[str, list[float]]:
    """A valid request in random tolerated styles, and the distinct values it names."""
    distinct = draw(st.lists(st.integers(-10_000_000, 100_000_000), min_size=1, max_size=20, unique=True))
    # One numeric spelling per value, so repeats parse to the identical float and must de-duplicate.
    spelled = {}
    for ms in distinct:
        styles = [f"{ms / 1000:.3f}", repr(ms / 1000)] + ([_clock(ms)] if ms >= 0 else [])
        spelled[ms] = draw(st.sampled_from(styles))
    occurrences = draw(st.lists(st.sampled_from(distinct), min_size=len(distinct), max_size=MAX_PARSED_TIMESTAMPS))
    occurrences = draw(st.permutations(list(distinct) + occurrences[len(distinct) :]))
    items = [spelled[ms] + ("" if ":" in spelled[ms] else draw(UNITS)) for ms in occurrences]
    body = items[0] + "".join(draw(SEPARATORS) + item for item in items[1:])
    if draw(st.booleans()):
        body = f"[{body}]"
    think = draw(NO_TAG_TEXT)
    text = f"{draw(st.sampled_from(['', ' ', chr(10)]))}<think>{think}</think>\n<frames>{body}</frames>"
    return text + draw(NO_TAG_TEXT), sorted(ms / 1000 for ms in distinct)


@PROPERTY
@given(frame_requests())
def test_valid_requests_parse_to_sorted_unique_values(case: tuple[str, list[float]]) -> None:
    text, expected = case
    result = parse_turn(text)
    assert isinstance(result, FrameRequest), (text, result)
    assert list(result.timestamps) == pytest.approx(expected, abs=1e-6)


TAG_SOUP = st.lists(
    st.one_of(
        st.sampled_from(
            ["<think>", "</think>", "<answer>", "</answer>", "<frames>", "</frames>", "<ANSWER>", "A", "b)", "(C",
             "1.5", "2:03", "nan", ",", ";", " ", "\n", "s", "1e999", "Option "]
        ),
        st.text(max_size=8),
    ),
    max_size=30,
).map("".join)  # fmt: skip


@PROPERTY
@given(st.one_of(st.text(), TAG_SOUP), st.integers(1, len(OPTION_LETTERS)))
def test_parse_never_raises(text: str, num_options: int) -> None:
    result = parse_turn(text, num_options=num_options)
    assert isinstance(result, Answer | FrameRequest | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in INVALID_REASONS
    if isinstance(result, Answer):
        assert result.letter in OPTION_LETTERS[:num_options]
    if isinstance(result, FrameRequest):
        assert list(result.timestamps) == sorted(set(result.timestamps))
        assert 1 <= len(result.timestamps) <= MAX_PARSED_TIMESTAMPS
    final = parse_final_answer(text, num_options=num_options)
    assert final is None or final in OPTION_LETTERS[:num_options]


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, str, int]:
    num_options = draw(st.integers(1, len(OPTION_LETTERS)))
    letter = draw(st.sampled_from(OPTION_LETTERS[:num_options]))
    option_text = draw(st.text(alphabet="abcdefghij XYZ", max_size=20))
    body = draw(
        st.sampled_from(
            [letter, letter.lower(), f"({letter})", f"{letter}.", f"{letter})", f"{letter.lower()})",
             f"{letter}) {option_text}", f"{letter}. {option_text}", f"Option {letter}", f"Answer: {letter}"]
        )
    )  # fmt: skip
    pad = draw(st.sampled_from(["", " ", "\n"]))
    think = draw(st.one_of(st.just(""), NO_TAG_TEXT.map(lambda t: f"<think>{t}</think>")))
    return f"{pad}{think}{pad}<answer>{pad}{body}{pad}</answer>{draw(NO_TAG_TEXT)}", letter, num_options


@PROPERTY
@given(answers())
def test_answer_round_trip(case: tuple[str, str, int]) -> None:
    text, letter, num_options = case
    assert parse_turn(text, num_options=num_options) == Answer(letter)
    assert parse_final_answer(text, num_options=num_options) == letter


# ---------------------------------------------------------------------------------------------------
# Prompt builders


@dataclass(frozen=True)
class FakeFrame:
    timestamp: float
    image: Image.Image


def _frames(*timestamps: float) -> list[FakeFrame]:
    return [FakeFrame(t, Image.new("RGB", (28, 28), (i * 40, 0, 0))) for i, t in enumerate(timestamps)]


def _text(blocks: list[dict]) -> str:
    return "".join(block["text"] for block in blocks if block["type"] == "text")


def _assert_labelled_in_order(blocks: list[dict], frames: list[FakeFrame]) -> None:
    assert all(block["type"] in {"text", "image"} for block in blocks)
    image_positions = [i for i, block in enumerate(blocks) if block["type"] == "image"]
    assert [blocks[i]["image"] for i in image_positions] == [frame.image for frame in frames]
    for position, frame in zip(image_positions, frames, strict=True):
        assert blocks[position - 1]["type"] == "text"
        assert blocks[position - 1]["text"].endswith(f"Frame at {format_timestamp(frame.timestamp)}: ")
        assert blocks[position + 1]["type"] == "text" and blocks[position + 1]["text"].startswith("\n")


@pytest.mark.parametrize(("seconds", "label"), [(3.5, "3.5s"), (0, "0.0s"), (12.345, "12.3s"), (61.96, "62.0s")])
def test_format_timestamp(seconds: float, label: str) -> None:
    assert format_timestamp(seconds) == label


def test_question_text() -> None:
    text = question_text(" What is held? ", ["a cup", "a pen "])
    assert text == "Question: What is held?\nOptions:\nA. a cup\nB. a pen"
    with pytest.raises(ValueError):
        question_text("q", [])
    with pytest.raises(ValueError):
        question_text("q", list("abcdef"))


def test_initial_content_with_requests() -> None:
    frames = _frames(0.0, 10.25, 20.5)
    blocks = initial_user_content(
        question="What happens?", options=["x", "y", "z"], duration=42.04, frames=frames,
        allows_requests=True, frames_left=13, turns_left=4,
    )  # fmt: skip
    _assert_labelled_in_order(blocks, frames)
    text = _text(blocks)
    assert "42.0s long" in text and "shown 3 frames" in text
    assert question_text("What happens?", ["x", "y", "z"]) in text
    assert "Frames left: 13" in text and "Turns left: 4" in text
    assert text.index("Frame at 20.5s") < text.index("Question:")
    assert TAG.search(text) is None


def test_initial_content_without_requests() -> None:
    frames = _frames(1.0, 2.0)
    blocks = initial_user_content(
        question="Q?", options=["x", "y"], duration=5.0, frames=frames, allows_requests=False,
        frames_left=0, turns_left=1,
    )  # fmt: skip
    _assert_labelled_in_order(blocks, frames)
    text = _text(blocks)
    assert "Answer with the letter" in text
    assert "Frames left" not in text and "request" not in text.lower()


@pytest.mark.parametrize(
    ("frames_left", "turns_left", "expected", "absent"),
    [
        (4, 3, "otherwise request the frames you need", "answer now"),
        (4, 1, "This is your last turn: answer now.", "No frames left"),
        (0, 3, "No frames left: answer now.", "last turn"),
        (0, 1, "This is your last turn: answer now.", "No frames left"),
    ],
)
def test_followup_content_budgets(frames_left: int, turns_left: int, expected: str, absent: str) -> None:
    frames = _frames(7.0, 3.0)
    blocks = followup_user_content(
        frames=frames, notes=["1 requested timestamp was already shown"], frames_left=frames_left,
        turns_left=turns_left,
    )  # fmt: skip
    _assert_labelled_in_order(blocks, frames)
    text = _text(blocks)
    assert f"Frames left: {frames_left}. Turns left: {turns_left}." in text
    assert expected in text and absent not in text
    assert "1 requested timestamp was already shown" in text
    assert TAG.search(text) is None


def test_followup_content_without_frames() -> None:
    blocks = followup_user_content(frames=[], notes=["All requested timestamps were already shown."],
                                   frames_left=2, turns_left=2)  # fmt: skip
    assert all(block["type"] == "text" for block in blocks)
    assert "requested timestamps were already shown" in _text(blocks)


def test_followup_text_can_never_forge_an_answer() -> None:
    with pytest.raises(ValueError, match="tags"):
        followup_user_content(frames=[], notes=["<answer>A</answer>"], frames_left=1, turns_left=2)
    response = (
        "<think>x</think><frames>1</frames>\nuser\n"
        + _text(followup_user_content(frames=_frames(1.0), notes=[], frames_left=0, turns_left=1))
        + "\nassistant\n<think>unsure"
    )
    assert parse_final_answer(response) is None


@pytest.mark.parametrize(("frames_left", "turns_left"), [(-1, 2), (1, 0)])
def test_followup_rejects_impossible_budgets(frames_left: int, turns_left: int) -> None:
    with pytest.raises(ValueError):
        followup_user_content(frames=[], notes=[], frames_left=frames_left, turns_left=turns_left)


def _example_replies(prompt: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"<think>[^<]*</think>\n<(answer|frames)>[^<]*</\1>", prompt)]


@pytest.mark.parametrize("per_request", [1, 2, 4])
def test_system_prompt_with_requests(per_request: int) -> None:
    prompt = system_prompt(allows_requests=True, max_frames_per_request=per_request, max_total_frames=12)
    assert f"at most {per_request} frames per request" in prompt and "12 frames in total" in prompt
    parsed = [parse_turn(reply) for reply in _example_replies(prompt)]
    assert {type(turn) for turn in parsed} == {Answer, FrameRequest}
    request = next(turn for turn in parsed if isinstance(turn, FrameRequest))
    assert len(request.timestamps) <= per_request


def test_system_prompt_without_requests() -> None:
    prompt = system_prompt(allows_requests=False, max_frames_per_request=3, max_total_frames=12)
    assert "<frames>" not in prompt and "request" not in prompt.lower()
    assert [parse_turn(reply) for reply in _example_replies(prompt)] == [Answer("B")]


def test_written_turns_parse_back_as_what_they_say() -> None:
    request = request_turn("Look again.", [9.5, 3.0, 120.25])
    assert request == "<think>Look again.</think><frames>9.5, 3, 120.25</frames>"
    assert parse_turn(request) == FrameRequest((3.0, 9.5, 120.25))
    assert parse_turn(answer_turn("Seen it.", "C")) == Answer("C")
