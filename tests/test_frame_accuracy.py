"""Frame-accurate in every container: the frame served at t is the one a full sequential decode shows at t.

Each file of the generated corpus (:mod:`video_corpus`: AVI with MPEG-4 Part 2 B-frames and with H.264
B-pyramids, variable frame rate, late start and edit-list cut mp4s, MKV, WebM/VP9, rotated MOV, one frame,
open-GOP H.264) is decoded once from start to end as the reference: its frames in the order the decoder
hands them out (display order), each with its presentation time. The reference is itself checked against
what the writer muxed (painted index and time of every frame). Then the sampler is asked for every frame's
start, middle and last instant, random times and times outside the clip, in random order (so it seeks and
decodes on), and each answer must be the reference's frame on screen at that time: identical pixels, the
same painted index, and a label equal to the reference frame's own time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter
from video_corpus import WRITERS, CorpusVideo

from sparse_video_r1.env.config import IMAGE_FACTOR
from sparse_video_r1.env.frames import DecodeFailedError, FrameSampler
from sparse_video_r1.synthetic.videos import read_frame_index, write_index_video

MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 16 * IMAGE_FACTOR * IMAGE_FACTOR


@dataclass(frozen=True)
class Reference:
    """A full sequential decode: ``frames[i]`` is the ``i``-th frame shown, from ``times[i]`` seconds."""

    frames: list[av.VideoFrame]
    times: list[float]
    end: float


def sequential_decode(path: Path) -> Reference:
    """Every frame in the decoder's output order, timed by its pts from the first frame's.

    In AVI the pts a decoder hands out are decode-order counters, so there the ``i``-th frame out is shown
    at tick ``i`` of the stream's time base (one tick per frame); elsewhere it is the frame's own pts.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        base = float(stream.time_base)
        by_ticks = container.format.name == "avi"
    stamps = [index if by_ticks else frame.pts for index, frame in enumerate(frames)]
    times = [(stamp - stamps[0]) * base for stamp in stamps]
    step = float(np.median(np.diff(times))) if len(times) > 1 else float(frames[0].duration or 0) * base
    return Reference(frames, times, times[-1] + step)


def rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """The picture at the sampler's output ``size`` (width, height), upright, converted as the sampler does."""
    turns = round(frame.rotation / 90) % 4
    width, height = size[::-1] if turns % 2 else size
    pixels = VideoReformatter().reformat(frame, width=width, height=height, format="rgb24", interpolation="BICUBIC")
    array = pixels.to_ndarray()
    return np.rot90(array, turns) if turns else array


def painted(pixels: np.ndarray, frame: av.VideoFrame) -> int:
    """The index the writer painted, read from the picture as stored (before any display rotation)."""
    turns = round(frame.rotation / 90) % 4
    return read_frame_index(np.rot90(pixels, -turns) if turns else pixels)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusVideo | str]:
    """Every corpus file written once per session; a container PyAV cannot write here maps to why."""
    root = tmp_path_factory.mktemp("corpus")
    written: dict[str, CorpusVideo | str] = {}
    for name, write in WRITERS.items():
        try:
            written[name] = write(root / name)
        except (av.FFmpegError, ValueError) as error:  # e.g. an encoder missing from this FFmpeg build
            written[name] = f"PyAV cannot write {name} here: {error}"
    return written


@pytest.fixture(scope="module")
def sampler() -> Iterator[FrameSampler]:
    own = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, frame_cache_bytes=0)  # every fetch decodes
    yield own
    own.close()


def video(corpus: dict[str, CorpusVideo | str], name: str) -> CorpusVideo:
    entry = corpus[name]
    if isinstance(entry, str):
        pytest.skip(entry)
    return entry


def checked_times(reference: Reference, rng: random.Random) -> list[float]:
    """Each frame's first instant, middle and last instant; random times; times before and after the clip."""
    starts, ends = reference.times, [*reference.times[1:], reference.end]
    times = []
    for start, end in zip(starts, ends, strict=True):
        times += [start, (start + end) / 2, end - 1e-4 * (end - start)]
    times += [rng.uniform(0, reference.end) for _ in range(20)]
    times += [-1.0, 0.0, reference.end, reference.end + 5, 1e9]
    rng.shuffle(times)
    return times


@pytest.mark.parametrize("name", list(WRITERS))
def test_the_reference_decode_shows_what_was_written(corpus: dict[str, CorpusVideo | str], name: str) -> None:
    """The reference is trusted only because it agrees with the writer: every frame, in order, at its time."""
    clip = video(corpus, name)
    reference = sequential_decode(clip.path)
    shown = [read_frame_index(frame.to_ndarray(format="rgb24")) for frame in reference.frames]  # as stored
    assert shown == list(clip.shown)
    assert reference.times == pytest.approx(clip.times, abs=1e-3)


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_checked_time_serves_the_frame_on_screen_then(
    corpus: dict[str, CorpusVideo | str], sampler: FrameSampler, name: str
) -> None:
    clip = video(corpus, name)
    reference = sequential_decode(clip.path)
    info = sampler.info(clip.path)
    assert info.num_frames == len(reference.frames)
    # The last frame's end is the only time no pts gives: its packet's duration, or the typical interval.
    assert info.duration == pytest.approx(reference.end, abs=0.5 * (reference.end - reference.times[-1]))
    rng = random.Random(name)
    times = checked_times(reference, rng)
    expected_rgb: dict[int, np.ndarray] = {}
    for t in times:
        (frame,) = sampler.fetch(clip.path, [t])
        on_screen = max((i for i, start in enumerate(reference.times) if start <= t), default=0)
        assert frame.index == on_screen, f"t={t}"
        if on_screen not in expected_rgb:
            expected_rgb[on_screen] = rgb(reference.frames[on_screen], frame.image.size)
        pixels = np.asarray(frame.image)
        assert np.array_equal(pixels, expected_rgb[on_screen]), f"t={t}: not the reference's picture"
        assert painted(pixels, reference.frames[on_screen]) == clip.shown[on_screen], f"t={t}"
        assert frame.timestamp == pytest.approx(reference.times[on_screen], abs=1e-6), f"t={t}"
    # One request for many times at once decodes them in one pass: the same frames.
    batch = sampler.fetch(clip.path, times)
    assert [frame.index for frame in batch] == sorted(expected_rgb)
    for frame in batch:
        assert np.array_equal(np.asarray(frame.image), expected_rgb[frame.index])


# ---------------------------------------------------------------------------------------------------
# Damage: one bad packet loses only the frames it breaks


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One 50-frame GOP whose 26th frame's packet is random bytes (the decoder rejects it)."""
    root = tmp_path_factory.mktemp("damaged")
    good = write_index_video(root / "good.mp4", num_frames=50, fps=25.0, keyframe_interval=50)
    with av.open(str(good)) as container:
        packets = sorted((packet.pts, packet.pos, packet.size) for packet in container.demux(video=0) if packet.size)
    data = bytearray(good.read_bytes())
    _, pos, size = packets[25]
    data[pos : pos + size] = random.Random(1).randbytes(size)
    path = root / "damaged.mp4"
    path.write_bytes(bytes(data))
    return path, 25


def decodable_past_errors(path: Path) -> dict[int, np.ndarray]:
    """What a decoder that skips rejected packets and goes on shows: painted index -> picture."""
    shown = {}
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for frame in frames:
                pixels = frame.to_ndarray(format="rgb24")
                shown[read_frame_index(pixels)] = pixels
    return shown


def test_a_bad_packet_loses_only_the_frames_it_breaks(damaged: tuple[Path, int]) -> None:
    path, broken = damaged
    survivors = decodable_past_errors(path)
    assert broken not in survivors and len(survivors) == 49  # the file really has one undecodable frame
    own = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    info = own.info(path)
    lost = []
    order = list(range(info.num_frames))
    random.Random(0).shuffle(order)
    for index in order:
        try:
            (frame,) = own.fetch(path, [info.frame_time(index) + 0.01])
        except DecodeFailedError as error:
            assert error.reason == "decode_failed" and "1 of 50 frames" in str(error)
            lost.append(index)
            continue
        assert frame.index == index and read_frame_index(frame.image) == index
    assert lost == [broken]
    assert own.lost_frames(path) == 1 and own.stats().frames_lost == 1 and own.stats().decode_errors >= 1
    # A request that spans the damage decodes on past it in one pass and fails only for the lost frame.
    with pytest.raises(DecodeFailedError, match=r"frames 25 \("):
        own.fetch(path, [0.5, info.frame_time(broken), 1.5])
    assert [read_frame_index(f.image) for f in own.fetch(path, [0.5, 1.5, 1.9])] == [12, 37, 47]
