"""A static HTML page for reading finished dialogues: each turn, and the frames it showed on the video's timeline.

Numbers say how often the model asked for frames; only reading dialogues shows *which* frames it asked for and
whether they could help. The page is one self-contained file (frames inlined as base64 JPEG thumbnails, no
scripts, no server), so it can be copied off a GPU host and opened anywhere.

Turns come from :func:`sparse_video_r1.training.standalone.split_turns`; the frames of each environment turn are its
image-pad runs, matched in order to ``multi_modal_data["images"]`` and ``shown_timestamps``.

Training rollouts: ``python -m sparse_video_r1.tools.viewer rollouts ROLLOUT_DATA_DIR [--step N]`` renders one step's
dialogue records (:mod:`sparse_video_r1.training.rollout_dump`), decoding the shown frames again from the videos.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from sparse_video_r1.env.config import DecodingConfig
from sparse_video_r1.env.frames import FrameSampler, VideoError, frame_index
from sparse_video_r1.env.protocol import OPTION_LETTERS, format_timestamp
from sparse_video_r1.training import rollout_dump
from sparse_video_r1.training.standalone import image_runs, split_turns

logger = logging.getLogger(__name__)

#: Longest side of a stored thumbnail, in pixels (shown at half that, sharp on high-density screens).
THUMB_SIDE = 192
JPEG_QUALITY = 75
#: The timeline's width in CSS pixels and a thumbnail's; thumbnails that would overlap go to another lane.
TIMELINE_PX = 1000
THUMB_PX = 96
THUMB_GAP_PX = 4


@dataclass(frozen=True)
class FrameView:
    """One shown frame; ``timestamp`` is None for the placeholder shown when a video could not be read."""

    timestamp: float | None
    jpeg_base64: str


@dataclass(frozen=True)
class TurnView:
    """``speaker`` is ``"model"`` or ``"environment"``; the opening turn is the environment's initial frames."""

    speaker: str
    text: str
    frames: tuple[FrameView, ...] = ()


@dataclass(frozen=True)
class DialogueView:
    """What the page shows of one dialogue; stored as JSON lines during evaluation, rendered at the end."""

    qid: str
    method: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    predicted_answer: str | None
    stop_reason: str
    video_duration: float | None
    turns: tuple[TurnView, ...]
    #: The reward the dialogue got, where known (training rollouts).
    reward: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> DialogueView:
        turns = tuple(
            TurnView(t["speaker"], t["text"], tuple(FrameView(**f) for f in t["frames"])) for t in item["turns"]
        )
        return cls(**{**item, "options": tuple(item["options"]), "turns": turns})


def thumbnail(image: Image.Image) -> str:
    """A small base64 JPEG of ``image``."""
    small = image.convert("RGB")
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def dialogue_view(
    output: AgentLoopOutput, question: Mapping[str, Any], tokenizer: Any, image_token_id: int, *, method: str
) -> DialogueView:
    """Everything the page needs from a finished dialogue, its frames reduced to thumbnails."""
    fields = output.extra_fields
    images = output.multi_modal_data["images"]
    timestamps: list[float | None] = list(fields["shown_timestamps"])
    timestamps += [None] * (len(images) - len(timestamps))  # a failed video shows one untimed placeholder
    frames = [FrameView(t, thumbnail(image)) for t, image in zip(timestamps, images, strict=True)]
    shown = image_runs(output.prompt_ids, image_token_id)
    turns = [TurnView("environment", "", tuple(frames[:shown]))]
    segments = [
        [token for token, _ in group]
        for _, group in itertools.groupby(
            zip(output.response_ids, output.response_mask, strict=True), key=lambda p: p[1]
        )
    ]
    for turn, segment in zip(split_turns(tokenizer, output), segments, strict=True):
        count = image_runs(segment, image_token_id)
        if turn.text or count:  # a dialogue that ended before the model spoke has one blank pad token
            turns.append(TurnView(turn.speaker, turn.text, tuple(frames[shown : shown + count])))
        shown += count
    return DialogueView(
        qid=str(question["qid"]),
        method=method,
        question=str(question["question"]),
        options=tuple(str(option) for option in question["options"]),
        answer=question.get("answer"),
        predicted_answer=fields["predicted_answer"],
        stop_reason=fields["stop_reason"],
        video_duration=fields["video_duration"],
        turns=tuple(turns),
    )


# ---------------------------------------------------------------------------------------------------
# Rendering

_CSS = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #f4f5f7; color: #1d1f23; }}
.dialogue {{ background: #fff; border-radius: 8px; padding: 16px 20px; margin-bottom: 28px;
  max-width: {TIMELINE_PX + 80}px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }}
.dialogue h2 {{ font-size: 16px; margin: 0 0 6px; }}
.meta {{ color: #5b6270; font-size: 12px; margin-bottom: 8px; }}
.options {{ margin: 4px 0 10px; padding-left: 0; list-style: none; }}
.options li.truth {{ font-weight: 600; color: #16794c; }}
.options li.chosen {{ text-decoration: underline; }}
.badge {{ display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff; }}
.badge.correct {{ background: #16794c; }} .badge.wrong {{ background: #b3261e; }} .badge.none {{ background: #6b7280; }}
.turn {{ border-left: 4px solid; padding: 6px 10px; margin: 8px 0; border-radius: 4px; }}
.turn.model {{ border-color: #2563eb; background: #eef3ff; }}
.turn.environment {{ border-color: #9ca3af; background: #f6f7f9; }}
.speaker {{ font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #5b6270; }}
.text {{ white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12.5px; margin: 4px 0; }}
.timeline {{ position: relative; width: {TIMELINE_PX}px; margin: 8px 0 4px; }}
.axis {{ position: absolute; left: 0; right: 0; height: 2px; background: #9ca3af; }}
.tick {{ position: absolute; width: 2px; height: 10px; margin-left: -1px; }}
.tick.new {{ background: #dc2626; }} .tick.old {{ background: #c4c8cf; }}
.end {{ position: absolute; font-size: 11px; color: #5b6270; }}
.frame {{ position: absolute; width: {THUMB_PX}px; height: {THUMB_PX * 3 // 4 + 16}px; margin: 0; text-align: center;
  font-size: 11px; line-height: 16px; z-index: 1; }}
.stem {{ position: absolute; width: 1px; background: #dc2626; }}
.frame img, .untimed img {{ width: {THUMB_PX}px; height: {THUMB_PX * 3 // 4}px; object-fit: contain; background: #000;
  display: block; border-radius: 3px; }}
.untimed {{ display: inline-block; margin: 4px 6px 0 0; font-size: 11px; }}
.index {{ border-collapse: collapse; background: #fff; margin-bottom: 24px; font-size: 12.5px; }}
.index th, .index td {{ padding: 3px 10px; border-bottom: 1px solid #e3e5e9; text-align: left; }}
"""

#: A thumbnail's height with its caption, and the height of one lane of thumbnails.
_FIGURE_PX = THUMB_PX * 3 // 4 + 16
_LANE_PX = _FIGURE_PX + 6
_AXIS_PX = 14


def _lanes(positions: Sequence[float]) -> list[int]:
    """A lane per thumbnail (0 = nearest the axis) so that thumbnails in one lane do not overlap."""
    width = (THUMB_PX + THUMB_GAP_PX) / TIMELINE_PX
    ends: list[float] = []
    lanes = []
    for left in positions:
        lane = next((i for i, end in enumerate(ends) if end <= left), len(ends))
        if lane == len(ends):
            ends.append(0.0)
        ends[lane] = left + width
        lanes.append(lane)
    return lanes


def _fraction(timestamp: float, duration: float) -> float:
    return min(max(timestamp / duration, 0.0), 1.0) if duration > 0 else 0.0


def _timeline(new: Sequence[FrameView], earlier: Sequence[float], duration: float) -> str:
    """The turn's frames as thumbnails over their place on the video's timeline, each joined to it by a stem.

    A thumbnail is centred on its moment (kept inside the timeline at the ends); earlier turns' frames are grey
    ticks, so the reader sees where the model looked before.
    """
    half = THUMB_PX / TIMELINE_PX / 2
    frames = sorted(new, key=lambda frame: frame.timestamp or 0.0)
    spots = [_fraction(frame.timestamp or 0.0, duration) for frame in frames]
    lefts = [min(max(spot, half), 1.0 - half) - half for spot in spots]
    lanes = _lanes(lefts)
    height = (max(lanes, default=0) + 1) * _LANE_PX
    axis = height + 4
    parts = [f'<div class="timeline" style="height:{axis + _AXIS_PX + 10}px">']
    for frame, spot, left, lane in zip(frames, spots, lefts, lanes, strict=True):
        top = height - (lane + 1) * _LANE_PX
        label = format_timestamp(frame.timestamp or 0.0)
        stem_top = top + _FIGURE_PX
        parts.append(
            f'<div class="stem" style="left:{100 * spot:.2f}%;top:{stem_top}px;height:{axis - stem_top}px"></div>'
            f'<figure class="frame" style="left:{100 * left:.2f}%;top:{top}px">'
            f'<img alt="frame at {label}" src="data:image/jpeg;base64,{frame.jpeg_base64}">{label}</figure>'
        )
    parts.append(f'<div class="axis" style="top:{axis}px"></div>')
    ticks = [("old", _fraction(t, duration)) for t in earlier] + [("new", spot) for spot in spots]
    parts += [
        f'<div class="tick {kind}" style="left:{100 * spot:.2f}%;top:{axis - 4}px"></div>' for kind, spot in ticks
    ]
    parts.append(f'<div class="end" style="left:0;top:{axis + 6}px">0s</div>')
    parts.append(f'<div class="end" style="right:0;top:{axis + 6}px">{format_timestamp(duration)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _untimed(frames: Sequence[FrameView]) -> str:
    return "".join(
        f'<figure class="untimed"><img alt="placeholder" src="data:image/jpeg;base64,{f.jpeg_base64}">no video</figure>'
        for f in frames
    )


def _verdict(view: DialogueView) -> str:
    if view.predicted_answer is None:
        return '<span class="badge none">no answer</span>'
    kind = "correct" if view.predicted_answer == view.answer else "wrong"
    return f'<span class="badge {kind}">{kind}: {html.escape(view.predicted_answer)} vs truth {view.answer}</span>'


def render_dialogue(view: DialogueView) -> str:
    """One ``<section class="dialogue">`` block: header, options, then every turn with its frames."""
    options = []
    for letter, option in zip(OPTION_LETTERS, view.options, strict=False):
        classes = [c for c, on in (("truth", letter == view.answer), ("chosen", letter == view.predicted_answer)) if on]
        options.append(f'<li class="{" ".join(classes)}">{letter}. {html.escape(option)}</li>')
    duration = view.video_duration or 0.0
    parts = [
        f'<section class="dialogue" id="{html.escape(view.qid)}">',
        f"<h2>{html.escape(view.question)}</h2>",
        f'<div class="meta">qid {html.escape(view.qid)} · {html.escape(view.method)} · '
        f"video {format_timestamp(duration)} · stop: {html.escape(view.stop_reason)} · {_verdict(view)}"
        f"{'' if view.reward is None else f' · reward {view.reward:.3f}'}</div>",
        f'<ul class="options">{"".join(options)}</ul>',
    ]
    earlier: list[float] = []
    for number, turn in enumerate(view.turns):
        label = "environment: opening frames" if number == 0 else turn.speaker
        parts.append(f'<div class="turn {turn.speaker}"><div class="speaker">{label}</div>')
        if turn.text:
            parts.append(f'<div class="text">{html.escape(turn.text)}</div>')
        timed = [f for f in turn.frames if f.timestamp is not None]
        if timed:
            parts.append(_timeline(timed, earlier, duration))
            earlier += [f.timestamp for f in timed if f.timestamp is not None]
        parts.append(_untimed([f for f in turn.frames if f.timestamp is None]))
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_index(views: Sequence[DialogueView]) -> str:
    """A table of the dialogues linking to each, so the multi-turn ones are found without scrolling through all."""
    rows = []
    for view in views:
        model_turns = sum(1 for turn in view.turns if turn.speaker == "model")
        frames = sum(len(turn.frames) for turn in view.turns)
        anchor = html.escape(view.qid, quote=True)
        rows.append(
            f'<tr><td><a href="#{anchor}">{html.escape(view.qid)}</a></td><td>{model_turns}</td><td>{frames}</td>'
            f"<td>{html.escape(view.stop_reason)}</td><td>{_verdict(view)}</td></tr>"
        )
    return (
        '<table class="index"><tr><th>qid</th><th>model turns</th><th>frames</th><th>stop</th><th>answer</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def render_html(views: Sequence[DialogueView], *, title: str = "Sparse-Video-R1 dialogues") -> str:
    body = "\n".join(render_dialogue(view) for view in views) or "<p>No dialogues were sampled.</p>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
        f"<p>{len(views)} dialogues. Red ticks: frames shown in that turn; grey ticks: frames shown before.</p>\n"
        f"{render_index(views) if views else ''}\n{body}\n</body></html>\n"
    )


def write_html(path: str | Path, views: Sequence[DialogueView], *, title: str = "Sparse-Video-R1 dialogues") -> None:
    Path(path).write_text(render_html(views, title=title), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Training rollouts (``trainer.rollout_data_dir``)


def rollout_view(record: Mapping[str, Any], sampler: FrameSampler) -> DialogueView:
    """A training dialogue record (:mod:`sparse_video_r1.training.rollout_dump`) with its video's frames decoded again.

    The shown frames' timestamps are the decoded frames' own, so fetching them again gives the frames the
    policy saw (at the viewer's pixel budget). A video that cannot be read now shows no frames.
    """
    shown = [float(t) for t in record.get("shown_timestamps") or []]
    frames: list[FrameView] = []
    try:
        if shown:
            info = sampler.info(record["video_path"])
            by_index = {frame.index: frame for frame in sampler.fetch(record["video_path"], shown)}
            decoded = [by_index[frame_index(info, t)] for t in shown]  # fetch sorts; the dialogue's order is kept
            frames = [FrameView(t, thumbnail(frame.image)) for t, frame in zip(shown, decoded, strict=True)]
    except VideoError as error:
        logger.warning("%s: %s; showing its dialogue without frames", record.get("qid"), error)
    turns_frames = [int(turn.get("frames", 0)) for turn in record["turns"]]
    opening = max(len(frames) - sum(turns_frames), 0)
    turns = [TurnView("environment", "", tuple(frames[:opening]))]
    cursor = opening
    for turn, count in zip(record["turns"], turns_frames, strict=True):
        if turn["text"] or count:
            turns.append(TurnView(turn["speaker"], turn["text"], tuple(frames[cursor : cursor + count])))
        cursor += count
    reward = record.get("score")
    parts = str(record["uid"]).rsplit("_", 2)  # verl's v1 trajectory key: <prompt uid>_<rollout>_<output>
    rollout = f"/r{parts[1]}" if len(parts) == 3 and parts[1].isdigit() else ""
    return DialogueView(
        qid=f"{record.get('qid') or record['uid']}{rollout}",
        method=f"training step {record['step']} · {record['uid']}",
        question=str(record.get("question") or ""),
        options=tuple(str(option) for option in record.get("options") or ()),
        answer=record.get("answer"),
        predicted_answer=record.get("predicted_answer"),
        stop_reason=str(record.get("stop_reason")),
        video_duration=record.get("video_duration"),
        turns=tuple(turns),
        reward=None if reward is None else float(reward),
    )


def render_rollouts(rollout_data_dir: Path, step: int | None, out: Path, *, limit: int, max_pixels: int) -> Path:
    """Write the page of one training step's dialogues (the last step with records when ``step`` is None)."""
    available = rollout_dump.steps(rollout_data_dir)
    if not available:
        raise FileNotFoundError(f"no dialogue records under {rollout_data_dir / rollout_dump.DIALOGUES_DIR}")
    step = available[-1] if step is None else step
    if step not in available:
        raise FileNotFoundError(f"step {step} has no dialogue records; steps with records: {available}")
    records = rollout_dump.read_step(rollout_data_dir, step)[:limit]
    sampler = FrameSampler.from_config(DecodingConfig(max_pixels=max_pixels, min_pixels=min(max_pixels, 3136)))
    views = [rollout_view(record, sampler) for record in records]
    write_html(out, views, title=f"Training rollouts, step {step}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render dialogues as a static HTML page.")
    commands = parser.add_subparsers(dest="command", required=True)
    rollouts = commands.add_parser("rollouts", help="one training step of trainer.rollout_data_dir")
    rollouts.add_argument("rollout_data_dir", type=Path)
    rollouts.add_argument("--step", type=int, default=None, help="default: the last step with records")
    rollouts.add_argument("--out", type=Path, default=None, help="default: ROLLOUT_DATA_DIR/step_<N>.html")
    rollouts.add_argument("--limit", type=int, default=64, help="dialogues on the page, in the dump's order")
    rollouts.add_argument("--max-pixels", type=int, default=64 * 28 * 28, help="decode budget per frame")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    step = args.step if args.step is not None else (rollout_dump.steps(args.rollout_data_dir) or [0])[-1]
    out = args.out or args.rollout_data_dir / f"step_{step}.html"
    render_rollouts(args.rollout_data_dir, args.step, out, limit=args.limit, max_pixels=args.max_pixels)
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
