"""The dialogue format: what the model is told, what it may write back, and how that is read.

Training, evaluation and the demo all import this module, so the model is always graded on exactly
the format it was prompted with.

The model writes ``<think>...</think>`` and then exactly one action:

* ``<answer>X</answer>`` with ``X`` an option letter, which ends the dialogue, or
* ``<frames>t1, t2, ...</frames>`` with timestamps in seconds, after which the environment shows
  those frames in the next user turn.

:func:`parse_turn` reads one assistant turn. It tolerates what real models write and rejects only what
is ambiguous, so a reward never depends on a guess. Tags inside ``<think>...</think>`` are ignored: a
model that muses "maybe ``<answer>A</answer>``?" has not answered, and treating the musing as an
action would punish thinking out loud. All tags are matched case-insensitively.

=============================================================  ==========================================
input                                                          outcome
=============================================================  ==========================================
``<think>..</think><answer>B</answer>``                        ``Answer("B")``
``  <answer>B</answer>  `` (no think block, whitespace)        ``Answer("B")``
``<answer>B</answer> Hope that helps!`` (text after)           ``Answer("B")``
``<answer>b</answer>``, ``(B)``, ``B.``, ``B)``, ``[B]``       ``Answer("B")``
``<answer>B) The red car</answer>``, ``B. The red car``        ``Answer("B")`` (letter + option text)
``<answer>Option B</answer>``, ``Answer: B``                   ``Answer("B")``
``<answer>B</answer><answer>B</answer>`` (same letter twice)   ``Answer("B")``
``<think>maybe <answer>A</answer></think><answer>B</answer>``  ``Answer("B")`` (think content ignored)
``..thinking..</think><answer>B</answer>`` (no ``<think>``)    ``Answer("B")`` (text before a stray
                                                               ``</think>`` is thinking)
``<frames>3.5, 12</frames>``                                   ``FrameRequest((3.5, 12.0))``
``<frames>12s; 3.5 s 3.5sec</frames>``                         ``FrameRequest((3.5, 12.0))`` (sorted,
                                                               de-duplicated)
``<frames>[1, 2.5 seconds]</frames>`` (one bracket pair)       ``FrameRequest((1.0, 2.5))``
``<frames>00:03.5, 1:02:03</frames>`` (clock times)            ``FrameRequest((3.5, 3723.0))``
``<frames>-2, 1e4</frames>``                                   ``FrameRequest((-2.0, 10000.0))`` (the
                                                               caller clamps to the video)
``<frames>1e308</frames>`` (huge but finite)                   ``FrameRequest((1e308,))`` (clamped too)
empty or whitespace-only text                                  ``Invalid("empty")``
``<think>`` never closed                                       ``Invalid("unclosed_tag")``
``<answer>B`` or ``<frames>1, 2`` never closed                 ``Invalid("unclosed_tag")``
``B</answer>`` (closing tag without opening tag)               ``Invalid("stray_closing_tag")``
``<answer><frames>1</frames></answer>``                        ``Invalid("nested_tags")``
no action tag outside the think block                          ``Invalid("no_action")``
both an ``<answer>`` and a ``<frames>`` tag                    ``Invalid("conflicting_actions")``
two ``<frames>`` tags                                          ``Invalid("multiple_requests")``
``<frames></frames>``, ``<frames> , </frames>``                ``Invalid("empty_request")``
more than :data:`MAX_PARSED_TIMESTAMPS` items in one tag       ``Invalid("too_many_timestamps")``
``<frames>1, soon</frames>``, ``nan``, ``inf``, ``1e999``,     ``Invalid("bad_timestamps")``
``1:75``, ``3.5s-5s``, a clock time past float range
``<answer>Z</answer>``, ``E`` with 4 options, ``a dog``,       ``Invalid("bad_answer")``
``Apple``, empty answer, an unreadable second answer
``<answer>A</answer><answer>B</answer>``                       ``Invalid("multiple_answers")``
a turn whose *tokens* hold ``<|image_pad|>`` or another vision   ``"vision_tokens"`` (decided by the agent
special token (invisible in decoded text)                      loop, which sees tokens; the turn is cut
                                                               before the first one)
=============================================================  ==========================================

Checks run in the table's order from ``empty`` down, so a reply with two faults reports the first
(among unclosed, stray and nested tags: the first one in the text).
A lower-case letter followed by free text (``a dog``) is rejected because it reads as an article.

User turns are lists of OpenAI-style blocks (``{"type": "text", "text": ...}`` and
``{"type": "image", "image": <PIL image>}``), the shape verl's Qwen-VL token builder consumes. The
environment's user turns end up in the decoded response the reward reads, so their text never
contains a think, answer or frames tag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

OPTION_LETTERS = "ABCDE"
#: How many options a question may have: two at least to choose between, one letter each at most (NExT-QA has five).
OPTION_COUNTS = range(2, len(OPTION_LETTERS) + 1)
#: Upper bound on items in one ``<frames>`` tag: a longer list is degenerate output, and the bound
#: keeps parsing cheap whatever the model writes.
MAX_PARSED_TIMESTAMPS = 64

INVALID_REASONS: tuple[str, ...] = (
    "empty",
    "unclosed_tag",
    "stray_closing_tag",
    "nested_tags",
    "no_action",
    "conflicting_actions",
    "multiple_requests",
    "empty_request",
    "too_many_timestamps",
    "bad_timestamps",
    "bad_answer",
    "multiple_answers",
)

#: The invalid reason of a turn whose token ids hold vision special tokens (the caller reports their count).
VISION_TOKENS = "vision_tokens"
#: Invalid reasons decided from a turn's token ids, which the text parser never sees.
TOKEN_INVALID_REASONS: tuple[str, ...] = (VISION_TOKENS,)


@dataclass(frozen=True)
class Answer:
    """The model committed to an option."""

    letter: str

    def __post_init__(self) -> None:
        if len(self.letter) != 1 or self.letter not in OPTION_LETTERS:
            raise ValueError(f"answer letter must be one of {OPTION_LETTERS!r}, got {self.letter!r}")

    @property
    def index(self) -> int:
        """Position of the chosen option, as datasets store labels."""
        return OPTION_LETTERS.index(self.letter)


@dataclass(frozen=True)
class FrameRequest:
    """The model asked to see frames at these timestamps (seconds; the caller clamps to the video)."""

    timestamps: tuple[float, ...]


@dataclass(frozen=True)
class Invalid:
    """The turn could not be read unambiguously; ``reason`` is a slug from :data:`INVALID_REASONS`."""

    reason: str

    def __post_init__(self) -> None:
        if self.reason not in INVALID_REASONS:
            raise ValueError(f"unknown invalid reason {self.reason!r}; known: {INVALID_REASONS}")


Turn = Answer | FrameRequest | Invalid


class FrameLike(Protocol):
    """A decoded frame and where it sits in the video (``sparse_video_r1.env.frames.TimedFrame`` fits)."""

    @property
    def timestamp(self) -> float: ...

    @property
    def image(self) -> Image.Image: ...


# ---------------------------------------------------------------------------------------------------
# Parsing

_THINK_TAG = re.compile(r"<(/?)think>", re.IGNORECASE)
_ACTION_TAG = re.compile(r"<(/?)(answer|frames)>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?(?:think|answer|frames)>", re.IGNORECASE)

# "Option B", "Answer: (b)", "B) text", "B. text", "B text"; lower case only without trailing free text.
_ANSWER_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:answer|option)(?:\s+is)?\s*[:\-]?\s*)?", re.IGNORECASE)
_UPPER_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\].:,]|\s|$)")
_LOWER_LETTER = re.compile(r"^[(\[]?([a-z])(?:[)\].:,](?:\s|$)|$)")

_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_SECONDS = re.compile(rf"^({_NUMBER})\s*(?:s|secs?|seconds?)?$", re.ASCII)
_CLOCK = re.compile(r"^(?:([0-9]+):)?([0-9]+):([0-9]+(?:\.[0-9]*)?)$", re.ASCII)
_UNIT_GAP = re.compile(r"([0-9.])\s+(s|secs?|seconds?)\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,;]+")
_ENCLOSING_BRACKETS = re.compile(r"^\s*[\[(](.*)[\])]\s*$", re.DOTALL)


@dataclass(frozen=True)
class _Visible:
    """Text outside think blocks, and whether a ``<think>`` was left open."""

    text: str
    unclosed_think: bool


@dataclass(frozen=True)
class _Tag:
    name: str  # "answer" or "frames"
    body: str


def _strip_think(text: str) -> _Visible:
    """Drop every think block; a stray ``</think>`` means all text before it was thinking.

    The stray-close rule covers chat templates that pre-fill ``<think>`` in the prompt. A ``<think>``
    inside a think block is part of the musing, not a nested block.
    """
    parts: list[str] = []
    pos = 0
    inside = False
    for match in _THINK_TAG.finditer(text):
        closing = bool(match.group(1))
        if not inside and not closing:
            parts.append(text[pos : match.start()])
            inside = True
        elif not inside and closing:
            parts.clear()
        elif inside and closing:
            inside = False
        else:
            continue  # a <think> inside a think block is just words
        pos = match.end()
    if not inside:
        parts.append(text[pos:])
    return _Visible(text="".join(parts), unclosed_think=inside)


def _action_tags(visible: str) -> list[_Tag] | Invalid:
    """Pair up ``<answer>``/``<frames>`` tags; any unbalanced or nested tag makes the turn ambiguous."""
    tags: list[_Tag] = []
    open_name: str | None = None
    body_start = 0
    for match in _ACTION_TAG.finditer(visible):
        closing, name = bool(match.group(1)), match.group(2).lower()
        if open_name is None:
            if closing:
                return Invalid("stray_closing_tag")
            open_name, body_start = name, match.end()
        elif not closing or name != open_name:
            return Invalid("nested_tags")
        else:
            tags.append(_Tag(name=name, body=visible[body_start : match.start()]))
            open_name = None
    if open_name is not None:
        return Invalid("unclosed_tag")
    return tags


def _parse_letter(body: str, num_options: int) -> str | None:
    """The option letter an answer body names, or None when it names none of the options."""
    stripped = _ANSWER_PREFIX.sub("", body.strip(), count=1)
    match = _UPPER_LETTER.match(stripped) or _LOWER_LETTER.match(stripped)
    if match is None:
        return None
    letter = match.group(1).upper()
    return letter if letter in OPTION_LETTERS[:num_options] else None


def parse_timestamp(token: str) -> float:
    """Seconds from ``3.5``, ``3.5s``, ``3.5 sec``, ``00:03.5`` or ``1:02:03``; ValueError on anything else.

    Only ASCII digits are accepted (Python's ``float`` would also take ``1_0`` or Arabic-Indic digits),
    and NaN/inf (also a clock time too large for a float) are rejected so a request never carries a
    timestamp no clamp can fix. Huge finite values such as ``1e308`` are kept: the caller clamps them.
    """
    text = token.strip()
    seconds_match = _SECONDS.fullmatch(text.lower())
    if seconds_match is not None:
        value = float(seconds_match.group(1))
    else:
        clock = _CLOCK.fullmatch(text)
        if clock is None:
            raise ValueError(f"not a timestamp: {token!r}")
        hours, minutes, seconds = int(clock.group(1) or 0), int(clock.group(2)), float(clock.group(3))
        if (clock.group(1) is not None and minutes >= 60) or seconds >= 60:
            raise ValueError(f"clock field out of range in {token!r}")
        try:
            value = hours * 3600.0 + minutes * 60.0 + seconds
        except OverflowError:  # a 400-digit hour field is an int no float can hold
            raise ValueError(f"clock time too large: {token!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"timestamp is not finite: {token!r}")
    return value + 0.0  # turns -0.0 into 0.0


def _parse_request(body: str) -> FrameRequest | Invalid:
    """Read a ``<frames>`` body: numbers separated by commas, semicolons or spaces."""
    bracketed = _ENCLOSING_BRACKETS.fullmatch(body)
    inner = bracketed.group(1) if bracketed else body
    items = [item for item in _SEPARATORS.split(_UNIT_GAP.sub(r"\1\2", inner)) if item]
    if not items:
        return Invalid("empty_request")
    if len(items) > MAX_PARSED_TIMESTAMPS:
        return Invalid("too_many_timestamps")
    try:
        values = {parse_timestamp(item) for item in items}
    except ValueError:
        return Invalid("bad_timestamps")
    return FrameRequest(timestamps=tuple(sorted(values)))


def _check_num_options(num_options: int) -> None:
    if not 1 <= num_options <= len(OPTION_LETTERS):
        raise ValueError(f"num_options must be in 1..{len(OPTION_LETTERS)}, got {num_options}")


def parse_turn(text: str, num_options: int = 5) -> Turn:
    """Read one assistant turn; never raises on model text (see the module docstring's table)."""
    _check_num_options(num_options)
    if not text.strip():
        return Invalid("empty")
    visible = _strip_think(text)
    if visible.unclosed_think:
        return Invalid("unclosed_tag")
    tags = _action_tags(visible.text)
    if isinstance(tags, Invalid):
        return tags
    answers = [tag.body for tag in tags if tag.name == "answer"]
    requests = [tag.body for tag in tags if tag.name == "frames"]
    if not answers and not requests:
        return Invalid("no_action")
    if answers and requests:
        return Invalid("conflicting_actions")
    if len(requests) > 1:
        return Invalid("multiple_requests")
    if requests:
        return _parse_request(requests[0])
    letters = [_parse_letter(body, num_options) for body in answers]
    if None in letters:
        return Invalid("bad_answer")
    if len(set(letters)) > 1:
        return Invalid("multiple_answers")
    return Answer(letter=letters[0])  # type: ignore[arg-type]  # None ruled out above


def parse_final_answer(solution_str: str, num_options: int = 5) -> str | None:
    """The letter of the last ``<answer>`` outside think blocks in a whole decoded dialogue, or None.

    verl's reward sees every assistant turn and the user turns between them as one string; only the
    last answer counts because the dialogue ends at the first valid one. Text after an unclosed
    ``<think>`` is thinking, so a truncated last turn whose answer sits in its musing has no answer.
    """
    _check_num_options(num_options)
    bodies = re.findall(r"<answer>(.*?)</answer>", _strip_think(solution_str).text, re.IGNORECASE | re.DOTALL)
    return _parse_letter(bodies[-1], num_options) if bodies else None


# ---------------------------------------------------------------------------------------------------
# Writing model turns (cold-start traces and scripted policies write what :func:`parse_turn` reads)


def request_turn(thought: str, timestamps: Sequence[float]) -> str:
    """A frame-request turn, timestamps in seconds as plain numbers (``<frames>3, 9.5</frames>``)."""
    return f"<think>{thought}</think><frames>{', '.join(f'{t:g}' for t in timestamps)}</frames>"


def answer_turn(thought: str, letter: str) -> str:
    """An answer turn: ``<think>…</think><answer>B</answer>``."""
    return f"<think>{thought}</think><answer>{letter}</answer>"


# ---------------------------------------------------------------------------------------------------
# Prompting


def format_timestamp(seconds: float) -> str:
    """The label form of a timestamp, e.g. ``3.5s``; one decimal is finer than frames are apart."""
    return f"{seconds:.1f}s"


def system_prompt(*, allows_requests: bool, max_frames_per_request: int, max_total_frames: int) -> str:
    """Explain the format with one tiny example per allowed action, and the frame limits."""
    intro = (
        "You answer multiple-choice questions about a video. You cannot watch the video: you see only "
        "the frames you are shown, each labelled with its timestamp in seconds.\n\n"
        "First think step by step inside <think> </think>. Then"
    )
    answer_example = (
        "<think>At 12.0s the man hands the cup to the woman, so she holds it at the end.</think>\n<answer>B</answer>"
    )
    if not allows_requests:
        return (
            f"{intro} answer with <answer>X</answer>, where X is the letter of the correct option.\n\n"
            f"Example:\n{answer_example}"
        )
    example_request = ", ".join(["11", "12.5", "13.5"][: max(1, max_frames_per_request)])
    return (
        f"{intro} write exactly one of these two actions:\n"
        "- Answer: <answer>X</answer>, where X is the letter of the correct option. This ends the dialogue.\n"
        "- Request frames: <frames>t1, t2, ...</frames>, with timestamps in seconds between 0 and the video "
        "duration. You will be shown those frames, then you answer or request again.\n\n"
        f"Limits: at most {max_frames_per_request} frames per request and {max_total_frames} frames in total, "
        "counting the frames already shown. Request only frames you need; answer as soon as the frames you "
        "have are enough.\n\n"
        "Examples:\n"
        "<think>The cup is on the table at 10.0s but I cannot see who picks it up. "
        f"I need frames between 10 and 14 seconds.</think>\n<frames>{example_request}</frames>\n\n"
        f"{answer_example}"
    )


def question_text(question: str, options: Sequence[str]) -> str:
    """``Question: ...`` followed by the lettered options, one per line."""
    if not 1 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(f"need 1..{len(OPTION_LETTERS)} options, got {len(options)}")
    lines = [f"Question: {question.strip()}", "Options:"]
    lines += [f"{letter}. {option.strip()}" for letter, option in zip(OPTION_LETTERS, options, strict=False)]
    return "\n".join(lines)


def _check_no_tags(text: str) -> str:
    """User text lands in the response the reward parses, so a tag in it could forge an answer."""
    if _ANY_TAG.search(text):
        raise ValueError(f"user text must not contain think/answer/frames tags: {text!r}")
    return text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _append_text(blocks: list[dict[str, Any]], text: str) -> None:
    """Merge with a preceding text block: the chat template concatenates blocks anyway."""
    if blocks and blocks[-1]["type"] == "text":
        blocks[-1]["text"] += text
    else:
        blocks.append({"type": "text", "text": text})


def _append_frames(blocks: list[dict[str, Any]], frames: Sequence[FrameLike]) -> None:
    """Each image preceded by its timestamp label and followed by a newline, in the given order."""
    for frame in frames:
        _append_text(blocks, f"Frame at {format_timestamp(frame.timestamp)}: ")
        blocks.append({"type": "image", "image": frame.image})
        _append_text(blocks, "\n")


def _budget_text(frames_left: int, turns_left: int) -> str:
    """What the model may still do; turns_left counts the turn it is about to write."""
    if frames_left < 0 or turns_left < 1:
        raise ValueError(f"need frames_left >= 0 and turns_left >= 1, got {frames_left}, {turns_left}")
    budget = f"Frames left: {frames_left}. Turns left: {turns_left}.\n"
    if turns_left == 1:
        return budget + "This is your last turn: answer now."
    if frames_left == 0:
        return budget + "No frames left: answer now."
    return budget + "Answer if the frames shown are enough; otherwise request the frames you need."


def initial_user_content(
    *,
    question: str,
    options: Sequence[str],
    duration: float,
    frames: Sequence[FrameLike],
    allows_requests: bool,
    frames_left: int,
    turns_left: int,
) -> list[dict[str, Any]]:
    """First user turn: duration, the initial frames, the question, and what to do next."""
    blocks: list[dict[str, Any]] = []
    _append_text(
        blocks,
        f"The video is {format_timestamp(duration)} long. You are shown {_count(len(frames), 'frame')} from it.\n",
    )
    _append_frames(blocks, frames)
    _append_text(blocks, question_text(question, options) + "\n\n")
    if allows_requests:
        _append_text(blocks, _budget_text(frames_left, turns_left))
    else:
        _append_text(blocks, "Answer with the letter of the correct option.")
    return blocks


def followup_user_content(
    *, frames: Sequence[FrameLike], notes: Sequence[str], frames_left: int, turns_left: int
) -> list[dict[str, Any]]:
    """A later user turn: the requested frames, environment notes, and the remaining budget."""
    blocks: list[dict[str, Any]] = []
    if frames:
        _append_text(blocks, "Here are the frames you requested.\n")
        _append_frames(blocks, frames)
    for note in notes:
        _append_text(blocks, _check_no_tags(note.strip()) + "\n")
    _append_text(blocks, _budget_text(frames_left, turns_left))
    return blocks
