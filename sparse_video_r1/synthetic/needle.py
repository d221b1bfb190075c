"""Needle in a video: a synthetic task where choosing *where to look* is the only way to score.

No real weights reach the test and GPU machines, so "RL teaches the model to request the right frames"
has to be shown with the tiny random Qwen2.5-VL. This task makes that measurable.

Design
======

* A video is 20-60 s of small frames (56x56 at 2 fps; the dialogue shows each as 16 visual tokens). A card
  (one of :data:`COLOURS`) fills the frame for :data:`NEEDLE_SECONDS` seconds; every other frame is a
  grey cue frame. The question asks the card's colour; the five options are always the colours in the same
  order, so the answer letter depends on the card alone. Answering blind scores 20 %.
* The card is centred on one of :data:`NUM_SLOTS` fixed times ``3, 9, ..., 57`` s (slot ``k`` at
  ``SLOT_SECONDS * (k + 0.5)``) that lies inside the video and whose card no initial uniform frame shows:
  the dialogue's opening frames never hit the needle, so answering at once stays at chance.
* The cue: every non-card frame is dark grey crossed by thin bright vertical bars, one every
  :data:`CUE_PERIOD` pixels, whose column within the period encodes the card's slot (:func:`cue_column`,
  left = early, right = late). Any initial frame therefore says where the card is, and a policy that reads
  it can request the slot's centre (``<frames>27</frames>``) and see the card in one request.

Why this is learnable by the tiny model (2-layer, 64-wide vision tower, 2-layer 128-wide LM)
---------------------------------------------------------------------------------------------

* The bar pattern repeats with the period of one visual token (the frame is shown at 112x112: a period of
  28 px is one 2x2 merge of 14-px patches), so every one of the 16 visual tokens of every initial frame
  carries the cue: no spatial reasoning, just a per-token feature the LM can attend to. And the patch
  embedding is linear in the pixels, so each bar column lands on its own direction, which a linear readout
  tells apart. The first cue, a flat grey whose level gave the slot, put all ten slots on one line (the
  embedding of ``level * ones``) that the model had to cut into ten intervals. Fine-tuned on informed
  traces (``scripts/needle_learnability.sh``), the tiny model was shown the card in 49 % of 128 held-out
  videos with the grey cue and in all of them with the bars (``docs/results/needle/learnability/``).
* The cue gives the card's time on an absolute grid of ten integers, not as a fraction of the video's
  duration: turning a fraction into seconds would ask a 2-layer LM to multiply a visual reading by a
  number from the prompt, learnable in principle but not in a few GRPO steps. Here the request is a
  ten-way choice of digits conditioned on one visual feature.
* The card is 2 s long, so any request within 1 s of the slot's centre shows it (an off-by-one second is
  still a hit), and a shown card is a saturated colour filling the frame: trivial to read.
* The cold start (:func:`needle_traces`) requests *random* slot centres, so RL starts from a policy that
  explores all ten answers to "where" and hits the card in roughly one dialogue of six; GRPO groups then
  contain hits and misses whose only systematic difference is the requested time given the cue.
* Random requests see the card in only about one trace of five, too few for the tiny model to learn to
  read it. ``--reading`` adds cold-start videos whose opening frames show the card, answered at once: they
  teach reading and say nothing about where to request. Measured on CPU (SFT 3 epochs, lr 1e-3, greedy, 64
  held-out videos whose opening frames show the card): 8 % right after 512 random-request traces alone,
  64 % after 512 of them plus 256 reading traces (chance: 20 %).

A blind policy that scans the grid is held back by the frame budget of :data:`DIALOGUE` (one frame per
request, two requests), so hitting reliably requires reading the cue. Uniform sampling needs many frames
to hit a 2-s card: :func:`uniform_hit_rate` gives the share of videos a given number of uniform frames
hits, i.e. the accuracy bound of a perfect reader of uniform frames.

Reward (``reward.custom_reward_function.path=pkg://sparse_video_r1.synthetic.needle``): :func:`compute_score` is the
standard :func:`sparse_video_r1.training.reward.compute_score` plus ``needle_distance``, ``hit_needle`` and
``proximity`` for logging. ``proximity_weight`` (a reward kwarg, default 0) adds ``proximity`` to the score: a
shaping term that grades *where* a dialogue looked, ``exp(-distance / SLOT_SECONDS)`` for its closest
request (1 on the card, 0.37 one slot away, 0 without a request). With accuracy alone, a request earns
nothing unless it lands on the card (one dialogue in ten at the cold start), so GRPO's signal about where
to look is sparse; the shaping term gives every request a graded one. It uses the card's time, which only
a synthetic task knows: a documented variant of the experiment, never the default.

CLI::

    python -m sparse_video_r1.synthetic.needle --out DIR --train 512 --val 128 --seed 0 [--traces 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sparse_video_r1.data.records import VideoQARecord, to_verl_row, write_parquet
from sparse_video_r1.env import protocol
from sparse_video_r1.env.config import DecodingConfig, DialogueRules, SparseVideoConfig, uniform_baseline_fields
from sparse_video_r1.env.dialogue import ENVIRONMENT_FAILURES, Episode, VideoQA
from sparse_video_r1.env.frames import FrameSampler, VideoInfo, frame_index, uniform_timestamps
from sparse_video_r1.env.protocol import OPTION_LETTERS
from sparse_video_r1.synthetic.videos import write_video
from sparse_video_r1.training import reward

logger = logging.getLogger(__name__)

DATA_SOURCE = "needle"
FPS = 2.0
#: Frame side in pixels; a multiple of CUE_PERIOD.
SIDE = 56
MIN_SECONDS = 20.0
MAX_SECONDS = 60.0
SLOT_SECONDS = 6.0
NUM_SLOTS = round(MAX_SECONDS / SLOT_SECONDS)
NEEDLE_SECONDS = 2.0
#: The card ends at least this long before the video does: a request past the end is clamped to the last
#: frame, which must not be a way to find a card without reading the cue.
END_MARGIN_SECONDS = 1.0
#: Card colours (RGB), in option order. Saturated, so no grey cue frame is mistaken for a card.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 200),
}
#: The cue frame's bar pattern repeats every CUE_PERIOD pixels: one visual token's width once shown at 2x.
CUE_PERIOD = 14
#: Grey of a cue frame's ground and of its bars.
CUE_GROUND, CUE_BAR = 40, 220
#: A frame whose channels differ by less than this (after coding) is grey, i.e. a cue frame.
_GREY_CHROMA = 60.0
QUESTION = (
    f"A coloured card fills the screen for {NEEDLE_SECONDS:g} seconds. Which colour is it? Every other frame "
    f"is grey with thin bright bars, and the further right the bars, the later the card: leftmost means near "
    f"0 seconds, rightmost near {MAX_SECONDS:g} seconds."
)
#: The dialogue the task is built for: four opening frames, then at most two one-frame requests. Every
#: frame is shown at DecodingConfig's default minimum size (16 visual tokens), so tools that set only a
#: maximum (``evaluate --max-pixels``) reproduce it.
DIALOGUE = SparseVideoConfig(
    dialogue=DialogueRules(
        initial_frames=4, max_frames_per_request=1, max_total_frames=6, max_turns=3, max_tokens_per_turn=48
    ),
    decoding=DecodingConfig(max_pixels=DecodingConfig.min_pixels),
)


def slot_centre(slot: int) -> float:
    """The time (s) the card of ``slot`` is centred on."""
    if not 0 <= slot < NUM_SLOTS:
        raise ValueError(f"slot must be in 0..{NUM_SLOTS - 1}, got {slot}")
    return SLOT_SECONDS * (slot + 0.5)


def cue_column(slot: int) -> int:
    """The column, within each :data:`CUE_PERIOD`, of the bars every non-card frame of a video whose card is in
    ``slot`` shows."""
    if not 0 <= slot < NUM_SLOTS:
        raise ValueError(f"slot must be in 0..{NUM_SLOTS - 1}, got {slot}")
    return slot


def cue_image(slot: int) -> np.ndarray:
    image = np.full((SIDE, SIDE, 3), CUE_GROUND, dtype=np.uint8)
    image[:, cue_column(slot) :: CUE_PERIOD] = CUE_BAR
    return image


def card_image(colour: int) -> np.ndarray:
    return np.broadcast_to(np.array(list(COLOURS.values())[colour], dtype=np.uint8), (SIDE, SIDE, 3)).copy()


def _mean_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """Mean colour of the central half of the frame, away from edges that coding and resizing blur."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    height, width = pixels.shape[:2]
    return pixels[height // 4 : height - height // 4, width // 4 : width - width // 4].reshape(-1, 3).mean(axis=0)


def read_card(image: Image.Image | np.ndarray) -> int | None:
    """The colour index of a card frame, or None for a grey (cue) frame."""
    rgb = _mean_rgb(image)
    if rgb.max() - rgb.min() < _GREY_CHROMA:
        return None
    distances = [float(np.linalg.norm(rgb - np.array(colour))) for colour in COLOURS.values()]
    return distances.index(min(distances))


def read_cue(image: Image.Image | np.ndarray) -> int:
    """The slot a grey frame's bars encode; ValueError for a card frame."""
    rgb = _mean_rgb(image)
    if rgb.max() - rgb.min() >= _GREY_CHROMA:
        raise ValueError(f"mean colour {rgb.round().tolist()} is a card, not a cue frame")
    grey = image.convert("L") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("L")
    # Back to the frame's own size (the dialogue shows it at 2x), then the mean brightness of each column of
    # the period: the bars' column is the brightest.
    pixels = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32)
    profile = pixels.mean(axis=0).reshape(-1, CUE_PERIOD).mean(axis=0)
    return int(np.argmax(profile[:NUM_SLOTS]))


@dataclass(frozen=True)
class Needle:
    """When the card is on screen: frames whose timestamp ``index / FPS`` lies in ``[start, end)``."""

    start: float
    end: float
    duration: float

    @classmethod
    def from_extra_info(cls, extra_info: Mapping[str, Any]) -> Needle:
        try:
            start, end, duration = (float(extra_info[key]) for key in ("needle_start", "needle_end", "duration"))
        except KeyError as error:
            raise KeyError(f"extra_info of {extra_info.get('qid', '?')!r} is not a needle row: no {error}") from None
        return cls(start, end, duration)

    @property
    def time(self) -> float:
        """The card's centre, the time a perfect policy requests."""
        return (self.start + self.end) / 2

    def shows(self, timestamp: float) -> bool:
        return self.start <= timestamp < self.end

    def extras(self) -> dict[str, float]:
        """The row's ``extra_info`` fields that :meth:`from_extra_info` reads back."""
        return {"needle_start": self.start, "needle_end": self.end, "duration": self.duration}


def frame_times(num_frames: int, timestamps: Sequence[float]) -> list[float]:
    """Timestamps of the frames the sampler returns for ``timestamps`` (``index / FPS``, as the model is told)."""
    info = VideoInfo(path="", num_frames=num_frames, fps=FPS, duration=num_frames / FPS)
    return [frame_index(info, t) / FPS for t in timestamps]


def uniform_frame_times(duration: float, count: int) -> list[float]:
    """Timestamps of the ``count`` uniform frames a dialogue opens with (or a uniform baseline shows)."""
    num_frames = round(duration * FPS)
    return frame_times(num_frames, uniform_timestamps(duration, min(count, num_frames)))


@dataclass(frozen=True)
class NeedleVideo:
    """One generated video: ``num_frames`` frames at :data:`FPS`, the card of ``colour`` in ``slot``."""

    num_frames: int
    slot: int
    colour: int

    @property
    def duration(self) -> float:
        return self.num_frames / FPS

    @property
    def needle(self) -> Needle:
        centre = slot_centre(self.slot)
        return Needle(centre - NEEDLE_SECONDS / 2, centre + NEEDLE_SECONDS / 2, self.duration)

    def frames(self) -> Iterator[np.ndarray]:
        needle = self.needle
        for index in range(self.num_frames):
            yield card_image(self.colour) if needle.shows(index / FPS) else cue_image(self.slot)


def valid_slots(num_frames: int, initial_frames: int) -> list[int]:
    """Slots whose card ends :data:`END_MARGIN_SECONDS` before the video and shows in none of the
    ``initial_frames`` uniform frames."""
    duration = num_frames / FPS
    opening = uniform_frame_times(duration, initial_frames)
    slots = []
    for slot in range(NUM_SLOTS):
        needle = NeedleVideo(num_frames, slot, 0).needle
        if needle.end + END_MARGIN_SECONDS <= duration and not any(needle.shows(t) for t in opening):
            slots.append(slot)
    return slots


def shown_slots(num_frames: int, initial_frames: int) -> list[int]:
    """Slots whose card ends :data:`END_MARGIN_SECONDS` before the video and shows in an opening frame."""
    duration = num_frames / FPS
    opening = uniform_frame_times(duration, initial_frames)
    return [
        slot
        for slot in range(NUM_SLOTS)
        if (needle := NeedleVideo(num_frames, slot, 0).needle).end + END_MARGIN_SECONDS <= duration
        and any(needle.shows(t) for t in opening)
    ]


def draw_video(rng: random.Random, initial_frames: int, *, hidden: bool = True) -> NeedleVideo:
    """A uniformly random slot and colour, then a random duration in [MIN_SECONDS, MAX_SECONDS] that holds
    the card where no opening frame shows it (``hidden``) or where one does (a cold-start *reading* video).

    Drawing the slot first keeps every slot equally likely: drawing the duration first would favour early
    slots (only long videos have late ones), a prior a blind policy could exploit.
    """
    fits = valid_slots if hidden else shown_slots
    slots = list(range(NUM_SLOTS))
    rng.shuffle(slots)
    for slot in slots if not hidden else slots[:1]:
        card_end = slot_centre(slot) + NEEDLE_SECONDS / 2 + END_MARGIN_SECONDS
        shortest = max(round(MIN_SECONDS * FPS), math.ceil(card_end * FPS))
        lengths = list(range(shortest, round(MAX_SECONDS * FPS) + 1))
        rng.shuffle(lengths)
        num_frames = next((n for n in lengths if slot in fits(n, initial_frames)), None)
        if num_frames is not None:
            return NeedleVideo(num_frames, slot, rng.randrange(len(COLOURS)))
    raise ValueError(f"no video length puts slot {slots[0]} where {initial_frames} opening frames need it")


def write_split(
    out: Path, split: str, count: int, rng: random.Random, initial_frames: int, *, hidden: bool = True
) -> list[dict[str, Any]]:
    """Write ``count`` videos under ``out/videos`` and ``out/<split>.parquet``; return the verl rows."""
    rows = []
    for index in range(count):
        video = draw_video(rng, initial_frames, hidden=hidden)
        qid = f"needle_{split}_{index:05d}"
        path = write_video(out / "videos" / f"{qid}.mp4", video.frames(), fps=FPS, width=SIDE, height=SIDE)
        record = VideoQARecord(
            qid=qid,
            video_id=qid,
            video_path=str(path.resolve()),
            question=QUESTION,
            options=tuple(COLOURS),
            answer_index=video.colour,
            question_type=DATA_SOURCE,
            source=DATA_SOURCE,
            split=split,
            extras=video.needle.extras(),
        )
        rows.append(to_verl_row(record, index))
    write_parquet(rows, out / f"{split}.parquet")
    return rows


# ---------------------------------------------------------------------------------------------------
# Reward and outcome statistics


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    proximity_weight: float = 0.0,
    **reward_kwargs: Any,
) -> dict[str, float]:
    """The standard reward plus where the dialogue looked: logged, and scored with ``proximity_weight``.

    ``needle_distance``: the smallest ``|requested - card centre|`` over the loop's ``requested_timestamps``,
    each clamped to the video as the dialogue clamps it before showing a frame (the video's duration when
    nothing was requested; a request for 9000 s in a 40-s video looked at its end, not 9000 s away);
    ``hit_needle``: 1.0 when a shown frame (the loop's ``shown_timestamps``) shows the card; ``proximity``: the
    shaping term (module docstring), never added to the score of a sample the environment failed (its
    ``failure_score`` stands). verl merges those loop fields into ``extra_info`` at top level (see
    :mod:`sparse_video_r1.training.reward`).
    """
    weight = float(proximity_weight)
    scores = reward.compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)
    info = extra_info or {}
    needle = Needle.from_extra_info(info)
    requested = [min(max(float(t), 0.0), needle.duration) for t in info.get("requested_timestamps", ())]
    shown = [float(t) for t in info.get("shown_timestamps", ())]
    distance = min((abs(t - needle.time) for t in requested), default=None)
    scores["needle_distance"] = needle.duration if distance is None else distance
    scores["hit_needle"] = float(any(needle.shows(t) for t in shown))
    scores["proximity"] = 0.0 if distance is None else math.exp(-distance / SLOT_SECONDS)
    if not any(scores[f"stop/{reason.value}"] for reason in ENVIRONMENT_FAILURES):
        scores["score"] += weight * scores["proximity"]
    return scores


def outcome_stats(samples: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Means over scored dialogues (rows of verl's rollout/validation dumps or of our own runs).

    ``accuracy_when_hit`` says whether the model reads the card when it is shown; None when no sample hit.
    """

    def mean(key: str, rows: Sequence[Mapping[str, Any]] = samples) -> float | None:
        return statistics.fmean(float(row[key]) for row in rows) if rows else None

    hits = [row for row in samples if row["hit_needle"]]
    return {
        "samples": len(samples),
        "accuracy": mean("accuracy"),
        "format": mean("format"),
        "hit_rate": mean("hit_needle"),
        "accuracy_when_hit": mean("accuracy", hits),
        "accuracy_when_missed": mean("accuracy", [row for row in samples if not row["hit_needle"]]),
        "needle_distance": mean("needle_distance"),
        "frames_used": mean("frames_used"),
        "share_requested": statistics.fmean(float(row["requested_frames"] > 0) for row in samples) if samples else None,
    }


def uniform_hit_rate(extra_infos: Sequence[Mapping[str, Any]], count: int) -> float:
    """Share of videos whose ``count`` uniform frames show the card: the accuracy of a perfect reader of
    uniform frames is ``hit + (1 - hit) / 5`` (it guesses when the card was not shown)."""
    needles = [Needle.from_extra_info(info) for info in extra_infos]
    return statistics.fmean(
        float(any(needle.shows(t) for t in uniform_frame_times(needle.duration, count))) for needle in needles
    )


# ---------------------------------------------------------------------------------------------------
# Cold-start traces


def request_text(timestamps: Sequence[float]) -> str:
    return protocol.request_turn("I need to find the card.", timestamps)


def answer_text(colour: int | None, guess: int) -> str:
    """The final turn: the card's colour when it was shown, else the guess."""
    if colour is None:
        return protocol.answer_turn("I did not see the card.", OPTION_LETTERS[guess])
    return protocol.answer_turn(f"The card is {list(COLOURS)[colour]}.", OPTION_LETTERS[colour])


def needle_traces(
    extra_infos: Sequence[Mapping[str, Any]],
    settings: SparseVideoConfig,
    *,
    copies: int = 1,
    seed: int = 0,
    max_requests: int = 2,
    uniform_share: float = 0.0,
    uniform_frames: Sequence[int] = (4, 8, 16),
    informed: bool = False,
) -> list[dict[str, Any]]:
    """Protocol traces with *uninformed* requests, ``copies`` per video, in the format ``sft`` reads.

    Each trace requests random slot centres (1 to ``max_requests`` requests, each of 1 to
    ``max_frames_per_request`` frames; another request only while the card has not been seen), played
    through a real :class:`~sparse_video_r1.env.dialogue.Episode` to learn what it shows, then answers the
    card's colour if a shown frame showed it and a random colour otherwise; a trace whose opening frames
    already show the card (a reading video, :func:`draw_video` with ``hidden=False``) answers at once. The
    cold start thus teaches the format and reading the card, never where to look: that is left to RL.
    ``card_seen`` records which traces saw the card (``sft`` ignores it). A share ``uniform_share`` of the
    traces are single-turn uniform-frame dialogues instead (N from ``uniform_frames``, the evaluation's
    ``uniform_N`` prompt, see :mod:`sparse_video_r1.training.sft`), answered the same way, so those baselines measure
    what their frames show rather than a prompt the model never saw.

    ``informed=True`` makes every trace's one request go straight to the card: supervised on those, the
    model shows whether it can learn the cue's mapping at all (a learnability check; never a cold start
    for RL, which must find the mapping itself).
    """
    dialogue = settings.dialogue
    if not dialogue.allows_requests:
        raise ValueError("needle traces need a dialogue that allows frame requests")
    rng = random.Random(seed)
    sampler = FrameSampler.from_config(settings.decoding)
    traces = []
    for info in extra_infos:
        sample = VideoQA.from_extra_info(info)
        needle = Needle.from_extra_info(info)
        colour = OPTION_LETTERS.index(str(sample.answer))
        inside = [slot_centre(slot) for slot in range(NUM_SLOTS) if slot_centre(slot) < needle.duration]
        for _ in range(copies):
            if uniform_share and rng.random() < uniform_share:
                frames = rng.choice(list(uniform_frames))
                single = uniform_baseline_fields(frames)
                episode = Episode(sample, dialogue.uniform_baseline(frames), sampler)
                episode.start()
                seen = any(needle.shows(frame.timestamp) for frame in episode.frames)
                turns = [answer_text(colour if seen else None, rng.randrange(len(COLOURS)))]
                traces.append({"extra_info": asdict(sample), "turns": turns, "card_seen": seen, "dialogue": single})
                continue
            episode = Episode(sample, dialogue, sampler)
            episode.start()
            turns: list[str] = []
            seen = any(needle.shows(frame.timestamp) for frame in episode.frames)
            shown = {frame.index for frame in episode.frames}
            # A time on a frame already shown would show nothing new (and be dropped as a repeat).
            video = sampler.info(sample.video_path)
            unasked = [t for t in inside if frame_index(video, t) not in shown]
            while (
                not seen
                and unasked
                and episode.frames_left > 0
                and len(turns) < min(max_requests, dialogue.max_turns - 1)
                and (informed or not turns or rng.random() < 0.5)
            ):
                count = rng.randint(1, min(dialogue.max_frames_per_request, episode.frames_left, len(unasked)))
                times = [needle.time] if informed else rng.sample(unasked, count)
                unasked = [t for t in unasked if t not in times]
                turns.append(request_text(sorted(times)))
                episode.play(turns[-1:])
                if episode.done:
                    raise RuntimeError(f"{sample.qid}: {turns[-1]!r} ended the dialogue ({episode.stop_reason})")
                seen = any(needle.shows(frame.timestamp) for frame in episode.frames)
            turns.append(answer_text(colour if seen else None, rng.randrange(len(COLOURS))))
            traces.append({"extra_info": asdict(sample), "turns": turns, "card_seen": seen})
    return traces


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--traces", type=int, default=0, help="cold-start traces per train video (OUT/traces.jsonl)")
    parser.add_argument(
        "--reading",
        type=int,
        default=0,
        help="extra cold-start videos whose opening frames show the card (OUT/read.parquet), one trace each",
    )
    parser.add_argument(
        "--uniform-share",
        type=float,
        default=0.2,
        help="share of train traces that are single-turn uniform 4/8/16-frame dialogues (the baselines' prompt)",
    )
    parser.add_argument(
        "--informed",
        action="store_true",
        help="train traces request the card's own time (a learnability check of the cue, not a cold start for RL)",
    )
    parser.add_argument(
        "--dialogue", default=json.dumps(asdict(DIALOGUE)), help="sparse_video settings as JSON, by section"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = SparseVideoConfig.from_mapping(json.loads(args.dialogue))
    dialogue = settings.dialogue
    rng = random.Random(args.seed)
    rows = {
        split: write_split(args.out, split, count, rng, dialogue.initial_frames)
        for split, count in (("train", args.train), ("val", args.val))
    }
    summary: dict[str, Any] = {"seed": args.seed, "sparse_video": asdict(settings)}
    for split, split_rows in rows.items():
        infos = [row["extra_info"] for row in split_rows]
        needles = [Needle.from_extra_info(info) for info in infos]
        summary[split] = {
            "videos": len(split_rows),
            "mean_seconds": statistics.fmean(needle.duration for needle in needles) if needles else None,
            "slots": dict(sorted(Counter(round(needle.time / SLOT_SECONDS - 0.5) for needle in needles).items())),
            "answers": dict(sorted(Counter(row["reward_model"]["ground_truth"] for row in split_rows).items())),
            "uniform_hit_rate": {n: uniform_hit_rate(infos, n) for n in (dialogue.initial_frames, 8, 16, 32)}
            if infos
            else None,
        }
    if args.traces:
        infos = [row["extra_info"] for row in rows["train"]]
        traces = needle_traces(
            infos,
            settings,
            copies=args.traces,
            seed=args.seed,
            uniform_share=args.uniform_share,
            informed=args.informed,
        )
        if args.reading:
            reading = write_split(args.out, "read", args.reading, rng, dialogue.initial_frames, hidden=False)
            traces += needle_traces([row["extra_info"] for row in reading], settings, seed=args.seed + 1)
            random.Random(args.seed).shuffle(traces)
        with open(args.out / "traces.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(trace) + "\n" for trace in traces)
        summary["traces"] = {
            "traces": len(traces),
            "card_seen": sum(trace["card_seen"] for trace in traces),
            "single_turn_uniform": sum("dialogue" in trace for trace in traces),
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
