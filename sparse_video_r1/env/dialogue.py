"""The frame-request environment: one video question, the frames shown so far, and the rules of each turn.

It knows nothing of tokens or models. The verl agent loop (training), evaluation and the demo all drive
the same :class:`Episode`, so the dialogue has exactly one implementation.

Outcomes of a model turn (the parser's own cases are documented in :mod:`sparse_video_r1.env.protocol`), and of
the faults the environment meets while serving it. Every row ends the dialogue with a ``stop_reason`` or is
counted in a field of :meth:`Episode.summary` (verl's ``extra_fields``, the reward's ``extra_info``):

======================================  =================================================================
model turn / fault                      outcome
======================================  =================================================================
valid answer                            dialogue ends, ``answered``
invalid / ambiguous turn (incl. empty)  dialogue ends, ``invalid_turn``; the parser's slug in
                                        ``invalid_reason`` (the reward's format term is 0)
vision special tokens in a turn's ids   dialogue ends, ``invalid_turn`` / ``vision_tokens`` (the caller,
                                        who sees tokens, cuts the turn before them and passes
                                        ``step`` their count)
frame request on the last turn, or      dialogue ends, ``max_turns``
when requests are disabled (baseline)
timestamps < 0 or past the end          clamped to the video, counted in ``clamped_timestamps``
(also huge ones such as ``1e308``)
timestamps of frames already shown, or  dropped, counted in ``repeated_timestamps``; a note tells the model
two falling on one frame in a request
more than ``max_frames_per_request``    the earliest ones kept, the rest counted in ``over_budget_timestamps``
new frames
request with no frame budget left       no frames, counted in ``over_budget_timestamps``; a note says so
a turn cut off by ``max_tokens`` (no    dialogue ends, ``truncated`` (the caller, who sees tokens, passes
end-of-turn token, or no token at all)  ``step`` ``truncated=True``)
next observation would overflow the     dialogue ends, ``context_limit`` (the caller says whether it fits:
context                                 ``show(..., fits=)``); also when the opening prompt alone exceeds
                                        the prompt length (``fit_opening(False)``, 0 turns)
video missing / unreadable / empty /    dialogue ends, ``video_error``; the ``VideoError``'s reason slug in
decode fails (at start or any request)  ``failure_reason`` (``missing``, ``unreadable``, ``decode_failed``...)
a decode or open exceeds its timeout    dialogue ends, ``decode_timeout`` (``failure_reason`` too)
any other exception in the sample       dialogue ends, ``error``; the exception's class in ``failure_reason``
======================================  =================================================================

The caller reports what only it can see (tokens, the context's length, an exception via ``fail``); the
:class:`Episode` decides every stop reason. The last three are the environment's faults, not the model's
(:attr:`Episode.failed`): the caller gives such a sample no gradient, so a broken file or a lost server
request never teaches the model that the turns it wrote before the fault were wrong.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sparse_video_r1.env import protocol
from sparse_video_r1.env.config import IMAGE_FACTOR, DialogueRules
from sparse_video_r1.env.frames import (
    DecodeTimeoutError,
    FrameSampler,
    TimedFrame,
    VideoError,
    VideoInfo,
    frame_index,
    uniform_timestamps,
)


class StopReason(str, enum.Enum):
    """Why a dialogue ended; recorded per sample and counted in rollout metrics."""

    ANSWERED = "answered"
    INVALID_TURN = "invalid_turn"
    MAX_TURNS = "max_turns"
    TRUNCATED = "truncated"
    CONTEXT_LIMIT = "context_limit"
    VIDEO_ERROR = "video_error"
    DECODE_TIMEOUT = "decode_timeout"
    ERROR = "error"


#: The whole user turn of a failed sample whose question does not fit the prompt length even without frames.
UNAVAILABLE_TEXT = "This sample could not be shown."

#: Stop reasons that say the environment failed, not the model (see :attr:`Episode.failed`).
ENVIRONMENT_FAILURES = frozenset({StopReason.VIDEO_ERROR, StopReason.DECODE_TIMEOUT, StopReason.ERROR})


@dataclass(frozen=True)
class VideoQA:
    """One multiple-choice question about one video, as the preprocessed rows' ``extra_info`` carries it."""

    video_path: str
    question: str
    options: tuple[str, ...]
    answer: str | None = None
    qid: str = ""

    @classmethod
    def from_extra_info(cls, extra_info: Mapping[str, Any]) -> VideoQA:
        """Read a row's ``extra_info``; a row that cannot become a prompt raises, naming the sample.

        Preprocessing (:mod:`sparse_video_r1.data`) never writes such a row, so one means the dataset did
        not come from it: failing the first step beats training on rows that can never be shown.
        """
        qid = extra_info.get("qid", "?")
        missing = [key for key in ("video_path", "question", "options") if key not in extra_info]
        if missing:
            raise KeyError(f"extra_info of sample {qid!r} lacks {missing}")
        counts = protocol.OPTION_COUNTS
        if len(extra_info["options"]) not in counts:
            raise ValueError(
                f"sample {qid!r} has {len(extra_info['options'])} options; need {counts.start}..{counts[-1]}"
            )
        return cls(
            video_path=str(extra_info["video_path"]),
            question=str(extra_info["question"]),
            options=tuple(str(option) for option in extra_info["options"]),
            answer=extra_info.get("answer"),
            qid=str(extra_info.get("qid", "")),
        )


@dataclass(frozen=True)
class Observation:
    """What the environment shows after a frame request: a user message and the new frames in it."""

    message: dict[str, Any]
    frames: tuple[TimedFrame, ...]
    requested: tuple[float, ...]
    clamped: int = 0
    repeated: int = 0
    over_budget: int = 0
    #: Per requested timestamp (clamped into the video), seconds to the nearest frame shown before the request.
    distances: tuple[float, ...] = ()


@dataclass
class Episode:
    """One dialogue, and the only judge of how it ends: every stop reason is decided here.

    ``start`` opens it and :meth:`fit_opening` takes the caller's verdict on the opening prompt; ``step``
    judges a model turn, given what only the caller saw in its tokens; ``show`` commits the frames it asked
    for, or ends the dialogue when the caller could not fit them; ``fail`` ends it on a fault. ``messages``
    and ``images`` are the dialogue so far, in order: what a caller renders into tokens. :meth:`play` runs
    known turns (SFT replay, cold-start traces), where no token budget applies.
    """

    sample: VideoQA
    config: DialogueRules
    sampler: FrameSampler
    info: VideoInfo | None = None
    frames: list[TimedFrame] = field(default_factory=list)
    #: The chat so far: the opening ``[system, user]``, then each assistant turn and each observation shown.
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: The blank frame of a sample that ended before its first turn (:meth:`open_blank`); not a shown frame.
    placeholder: Image.Image | None = None
    turns: int = 0
    invalid_turns: int = 0
    answer: str | None = None
    stop_reason: StopReason | None = None
    invalid_reason: str | None = None
    failure_reason: str | None = None
    requested_timestamps: list[float] = field(default_factory=list)
    clamped_timestamps: int = 0
    repeated_timestamps: int = 0
    over_budget_timestamps: int = 0
    request_distances: list[float] = field(default_factory=list)
    #: Vision special tokens the caller cut from the model's turns (see the module's table).
    vision_tokens_removed: int = 0

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def failed(self) -> bool:
        """The environment ended the dialogue (video, decode or any other fault), not the model."""
        return self.stop_reason in ENVIRONMENT_FAILURES

    @property
    def images(self) -> list[Image.Image]:
        """The image behind each placeholder of :attr:`messages`, in order: the frames shown (or the blank one)."""
        if self.placeholder is not None:
            return [self.placeholder]
        return [frame.image for frame in self.frames]

    @property
    def frames_left(self) -> int:
        return self.config.max_total_frames - len(self.frames)

    @property
    def turns_left(self) -> int:
        return self.config.max_turns - self.turns

    def start(self) -> list[dict[str, Any]]:
        """Decode the initial uniform frames and return the opening ``[system, user]`` messages."""
        self.info = self.sampler.info(self.sample.video_path)
        timestamps = uniform_timestamps(self.info.duration, min(self.config.initial_frames, self.info.num_frames))
        self.frames = self.sampler.fetch(self.sample.video_path, timestamps)
        self.messages = self.opening_messages(self.frames)
        return list(self.messages)

    def fit_opening(self, fits: bool) -> None:
        """The caller's verdict on the opening prompt; one too long for the context shows no frame and ends."""
        if not fits:
            self.frames.clear()
            self.messages.clear()
            self._stop(StopReason.CONTEXT_LIMIT)

    def open_blank(self, *, with_question: bool = True) -> list[dict[str, Any]]:
        """The opening of a sample that ended before its first turn: one blank frame and the question.

        The caller gives such a sample a gradient-free prompt (see the agent loop for why it keeps one
        image); ``with_question=False`` replaces the whole opening with one user message, the frame and
        :data:`UNAVAILABLE_TEXT`, for a question too long for the prompt even without frames. The blank
        frame is the smallest square the sampler would return; it is no shown frame of :meth:`summary`.
        """
        side = IMAGE_FACTOR
        while side * side < self.sampler.min_pixels:
            side += IMAGE_FACTOR
        self.placeholder = Image.new("RGB", (side, side))
        if with_question:
            self.messages = self.opening_messages([TimedFrame(timestamp=0.0, index=0, image=self.placeholder)])
        else:
            content = [{"type": "image", "image": self.placeholder}, {"type": "text", "text": UNAVAILABLE_TEXT}]
            self.messages = [{"role": "user", "content": content}]
        return list(self.messages)

    def opening_messages(self, frames: list[TimedFrame]) -> list[dict[str, Any]]:
        """The ``[system, user]`` messages showing ``frames``."""
        content = protocol.initial_user_content(
            question=self.sample.question,
            options=self.sample.options,
            duration=self.info.duration if self.info else 0.0,
            frames=frames,
            allows_requests=self.config.allows_requests,
            frames_left=self.frames_left,
            turns_left=self.turns_left,
        )
        system = protocol.system_prompt(
            allows_requests=self.config.allows_requests,
            max_frames_per_request=self.config.max_frames_per_request,
            max_total_frames=self.config.max_total_frames,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def step(self, text: str, *, truncated: bool = False, vision_tokens: int = 0) -> Observation | None:
        """Judge one assistant turn: end the dialogue (returns None) or return the frames it asked for.

        ``text`` is the turn as the model wrote it. A caller that sees tokens also says whether the turn hit
        ``max_tokens`` before its end-of-turn token (``truncated``) and how many vision special tokens it cut
        from it (``vision_tokens``); either ends the dialogue, vision tokens first.
        """
        if self.info is None:
            raise RuntimeError("Episode.step called before Episode.start")
        self.turns += 1
        self.messages.append({"role": "assistant", "content": text})
        if vision_tokens:
            self.vision_tokens_removed += vision_tokens
            self._reject(protocol.VISION_TOKENS)
            return None
        if truncated:
            self._stop(StopReason.TRUNCATED)
            return None
        turn = protocol.parse_turn(text, num_options=len(self.sample.options))
        if isinstance(turn, protocol.Answer):
            self.answer = turn.letter
            self._stop(StopReason.ANSWERED)
            return None
        if isinstance(turn, protocol.Invalid):
            self._reject(turn.reason)
            return None
        if self.turns >= self.config.max_turns or not self.config.allows_requests:
            self._stop(StopReason.MAX_TURNS)
            return None
        return self._observe(turn.timestamps)

    def show(self, observation: Observation, *, fits: bool = True) -> None:
        """Commit an observation the caller fitted into the context; one that does not fit ends the dialogue.

        A multimodal context is never truncated (cutting through image placeholders breaks the alignment of
        image features), so an observation that would overflow it is not shown: ``context_limit``.
        """
        if not fits:
            self._stop(StopReason.CONTEXT_LIMIT)
            return
        self.messages.append(observation.message)
        self.frames.extend(observation.frames)
        self.requested_timestamps.extend(observation.requested)
        self.clamped_timestamps += observation.clamped
        self.repeated_timestamps += observation.repeated
        self.over_budget_timestamps += observation.over_budget
        self.request_distances.extend(observation.distances)

    def play(self, turns: Sequence[str]) -> None:
        """Step and show each of ``turns`` (known text, no token budget: SFT replay, cold-start traces).

        Raises ``ValueError`` if the dialogue ends before the last turn; whether the last one ended it is
        :attr:`done`.
        """
        for index, text in enumerate(turns):
            observation = self.step(text)
            if observation is None:
                if index != len(turns) - 1:
                    raise ValueError(
                        f"sample {self.sample.qid!r} ended at turn {index + 1} ({self.stop_reason}) "
                        f"but has {len(turns)} turns"
                    )
                return
            self.show(observation)

    def fail(self, error: Exception) -> None:
        """End the dialogue because serving it raised ``error``, keeping its name for the metrics.

        A :class:`~sparse_video_r1.env.frames.VideoError` gives its reason slug (``missing``, ``unreadable``,
        ``decode_failed``, ...); anything else is a fault nobody named yet, so its class is what there is.
        """
        if isinstance(error, VideoError):
            self.failure_reason = error.reason
            self._stop(StopReason.DECODE_TIMEOUT if isinstance(error, DecodeTimeoutError) else StopReason.VIDEO_ERROR)
        else:
            self.failure_reason = type(error).__name__
            self._stop(StopReason.ERROR)

    def summary(self) -> dict[str, Any]:
        """Per-sample fields for verl's ``extra_fields`` (the reward and the rollout dumps read them)."""
        return {
            "stop_reason": (self.stop_reason or StopReason.ERROR).value,
            "predicted_answer": self.answer,
            "frames_used": len(self.frames),
            "assistant_turns": self.turns,
            "invalid_turns": self.invalid_turns,
            "invalid_reason": self.invalid_reason,
            "failure_reason": self.failure_reason,
            "requested_frames": len(self.frames) - min(len(self.frames), self.config.initial_frames),
            "requested_timestamps": list(self.requested_timestamps),
            "shown_timestamps": [frame.timestamp for frame in self.frames],
            "clamped_timestamps": self.clamped_timestamps,
            "repeated_timestamps": self.repeated_timestamps,
            "over_budget_timestamps": self.over_budget_timestamps,
            "request_distances": list(self.request_distances),
            "video_duration": self.info.duration if self.info else None,
        }

    def _stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _reject(self, reason: str) -> None:
        self.invalid_turns += 1
        self.invalid_reason = reason
        self._stop(StopReason.INVALID_TURN)

    def _observe(self, timestamps: tuple[float, ...]) -> Observation:
        assert self.info is not None
        last = max(0.0, math.nextafter(self.info.duration, 0.0))
        clamped = [min(max(t, 0.0), last) for t in timestamps]
        n_clamped = sum(1 for t, c in zip(timestamps, clamped, strict=True) if t != c)
        seen = [frame.timestamp for frame in self.frames]
        distances = tuple(min((abs(t - s) for s in seen), default=self.info.duration) for t in clamped)
        shown = {frame.index for frame in self.frames}
        wanted: dict[int, float] = {}
        repeated = 0
        for t in clamped:
            index = frame_index(self.info, t)
            if index in shown or index in wanted:
                repeated += 1
            else:
                wanted[index] = t
        budget = min(self.config.max_frames_per_request, self.frames_left)
        kept = sorted(wanted.values())[:budget]
        over_budget = len(wanted) - len(kept)
        frames = self.sampler.fetch(self.sample.video_path, kept) if kept else []
        notes = _notes(n_clamped, repeated, over_budget, self.info.duration)
        content = protocol.followup_user_content(
            frames=frames,
            notes=notes,
            frames_left=self.frames_left - len(frames),
            turns_left=self.turns_left,
        )
        return Observation(
            message={"role": "user", "content": content},
            frames=tuple(frames),
            requested=tuple(timestamps),
            clamped=n_clamped,
            repeated=repeated,
            over_budget=over_budget,
            distances=distances,
        )


def _notes(clamped: int, repeated: int, over_budget: int, duration: float) -> list[str]:
    notes = []
    if clamped:
        end = protocol.format_timestamp(duration)
        notes.append(f"{clamped} timestamp(s) outside 0-{end} were moved into the video.")
    if repeated:
        notes.append(f"{repeated} requested frame(s) were already shown.")
    if over_budget:
        notes.append(f"{over_budget} requested frame(s) exceeded the frame budget and were not shown.")
    return notes
