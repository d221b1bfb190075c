"""FrameSampler against real H.264 files and real PyAV decoding: every frame is checked by the index painted on it."""

from __future__ import annotations

import gc
import logging
import math
import os
import pickle
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sparse_video_r1.env import frames
from sparse_video_r1.env.config import IMAGE_FACTOR, DecodingConfig
from sparse_video_r1.env.frames import (
    DecodeFailedError,
    DecodeTimeoutError,
    EmptyVideoError,
    FrameSampler,
    TimedFrame,
    VideoError,
    VideoInfo,
    VideoNotFoundError,
    VideoUnreadableError,
    frame_index,
    resize_to_budget,
    uniform_timestamps,
)
from sparse_video_r1.synthetic.videos import read_frame_index, write_index_video

MIN_PIXELS = 16 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 64 * IMAGE_FACTOR * IMAGE_FACTOR


@dataclass(frozen=True)
class Clip:
    path: Path
    num_frames: int
    fps: float

    def expected_index(self, t: float) -> int:
        """floor(t * fps) clamped to the video; 1e-6 frame of slack so that index / fps maps back to index."""
        clamped = min(max(t, 0.0), self.num_frames / self.fps)
        return min(math.floor(clamped * self.fps + 1e-6), self.num_frames - 1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    root = tmp_path_factory.mktemp("videos")
    specs = {
        "gop16": dict(num_frames=90, fps=30.0, keyframe_interval=16),
        "default_gop": dict(num_frames=75, fps=25.0),
        "ntsc": dict(num_frames=50, fps=30000 / 1001, keyframe_interval=7),
        "large": dict(num_frames=20, fps=10.0, width=320, height=240, keyframe_interval=4),
    }
    specs |= {f"small{i}": dict(num_frames=6 + i, fps=5.0) for i in range(5)}
    clips = {}
    for name, spec in specs.items():
        path = write_index_video(root / f"{name}.mp4", **spec)
        clips[name] = Clip(path=path, num_frames=spec["num_frames"], fps=spec["fps"])
    return clips


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that are not usable videos: empty, text, a directory, and an mp4 whose last frames are garbage."""
    root = tmp_path_factory.mktemp("broken")
    (root / "zero.mp4").touch()
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "folder.mp4").mkdir()
    good = write_index_video(root / "good.mp4", num_frames=30)
    with av.open(str(good)) as container:  # overwrite the last coded frames; the container index stays intact
        spans = [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]
    data = bytearray(good.read_bytes())
    for pos, size in spans[-3:]:
        data[pos : pos + size] = random.Random(pos).randbytes(size)
    (root / "garbage.mp4").write_bytes(bytes(data))
    return {name: root / f"{name}.mp4" for name in ("zero", "text", "folder", "garbage")}


@pytest.fixture(scope="module")
def sampler() -> Iterator[FrameSampler]:
    shared = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_open_videos=4)
    yield shared
    shared.close()


def assert_frames_match(frames_: list[TimedFrame], clip: Clip, timestamps: list[float]) -> None:
    expected = sorted({clip.expected_index(t) for t in timestamps})
    assert [f.index for f in frames_] == expected
    for frame in frames_:
        assert read_frame_index(frame.image) == frame.index
        assert frame.timestamp == pytest.approx(frame.index / clip.fps, rel=1e-9, abs=1e-12)  # its own pts
        assert frame.image.mode == "RGB"


@pytest.mark.parametrize("name", ["gop16", "default_gop", "ntsc", "large"])
def test_info_reports_frames_fps_and_duration(sampler: FrameSampler, clips: dict[str, Clip], name: str) -> None:
    clip = clips[name]
    info = sampler.info(clip.path)
    assert info == VideoInfo(path=str(clip.path), num_frames=clip.num_frames, fps=info.fps, duration=info.duration)
    assert info.fps == pytest.approx(clip.fps, rel=1e-9)
    assert info.duration == pytest.approx(clip.num_frames / clip.fps)
    assert sampler.info(str(clip.path)) is info  # opened once, then served from the cache


def test_the_pts_index_is_built_once_per_video_and_timed(clips: dict[str, Clip]) -> None:
    own = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    infos = [own.info(clips[name].path) for name in ("gop16", "ntsc")]
    for _ in range(3):
        for info in infos:
            own.fetch(info.path, [0.0, info.duration / 2])
            assert own.info(info.path) is info
    stats = own.stats()
    assert stats.videos_opened == 2 and stats.index_seconds > 0
    assert stats.indexed_seconds == pytest.approx(sum(info.duration for info in infos))
    for info, name in zip(infos, ("gop16", "ntsc"), strict=True):  # one display time per frame, from its pts
        assert info.frame_times is not None and len(info.frame_times) == clips[name].num_frames
        assert np.allclose(info.frame_times, np.arange(info.num_frames) / clips[name].fps, atol=1e-9)


@pytest.mark.parametrize("name", ["gop16", "default_gop", "ntsc", "large"])
def test_timestamps_fetch_the_frame_shown_at_that_time(
    sampler: FrameSampler, clips: dict[str, Clip], name: str
) -> None:
    clip = clips[name]
    duration = clip.num_frames / clip.fps
    last = (clip.num_frames - 1) / clip.fps
    special = [0.0, 0.5 / clip.fps, 1 / clip.fps, last, last + 0.5 / clip.fps, duration, duration + 7.0, 1e300, -3.0]
    for t in special:
        assert_frames_match(sampler.fetch(clip.path, [t]), clip, [t])
    spread = [i * duration / 37 for i in range(37)]
    assert_frames_match(sampler.fetch(clip.path, spread), clip, spread)


@pytest.mark.parametrize("name", ["gop16", "ntsc"])
def test_every_returned_timestamp_fetches_its_own_frame(
    sampler: FrameSampler, clips: dict[str, Clip], name: str
) -> None:
    clip = clips[name]
    every = sampler.fetch(clip.path, [i / clip.fps for i in range(clip.num_frames)])
    assert [f.index for f in every] == list(range(clip.num_frames))
    assert [read_frame_index(f.image) for f in every] == list(range(clip.num_frames))
    again = sampler.fetch(clip.path, [f.timestamp for f in reversed(every)])
    assert [f.index for f in again] == list(range(clip.num_frames))


def test_duplicates_are_decoded_once_and_frames_come_back_sorted(sampler: FrameSampler, clips: dict[str, Clip]) -> None:
    clip = clips["gop16"]
    timestamps = [2.0, 0.0, 1.0, 0.01, 1.0, 2.9, 99.0, -1.0, 0.02]
    result = sampler.fetch(clip.path, timestamps)
    assert [f.index for f in result] == [0, 30, 60, 87, 89]
    assert_frames_match(result, clip, timestamps)
    assert sampler.fetch(clip.path, []) == []


def test_non_finite_timestamps_are_named(sampler: FrameSampler, clips: dict[str, Clip]) -> None:
    path = clips["gop16"].path
    with pytest.raises(ValueError, match=r"nan.*inf") as caught:
        sampler.fetch(path, [1.0, float("nan"), float("inf")])
    assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match="finite"):
        frame_index(sampler.info(path), float("-inf"))


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["gop16", "default_gop", "ntsc"]),
    timestamps=st.lists(
        st.one_of(st.floats(-2.0, 5.0, allow_nan=False), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=12,
    ),
)
def test_random_timestamps_fetch_floor_of_t_times_fps(
    sampler: FrameSampler, clips: dict[str, Clip], name: str, timestamps: list[float]
) -> None:
    clip = clips[name]
    assert_frames_match(sampler.fetch(clip.path, timestamps), clip, timestamps)


def test_frame_index_round_trips_index_over_fps() -> None:
    for fps in (30.0, 25.0, 30000 / 1001, 23.976, 7.0):
        info = VideoInfo(path="x.mp4", num_frames=5000, fps=fps, duration=5000 / fps)
        assert [frame_index(info, i / fps) for i in range(5000)] == list(range(5000))
        assert frame_index(info, -1.0) == 0 and frame_index(info, info.duration) == 4999


def test_uniform_timestamps_are_segment_centres() -> None:
    assert uniform_timestamps(8.0, 4) == [1.0, 3.0, 5.0, 7.0]
    assert uniform_timestamps(3.0, 1) == [1.5]
    assert uniform_timestamps(3.0, 0) == []
    many = uniform_timestamps(2.5, 7)
    assert many == sorted(many) and many[0] > 0 and many[-1] < 2.5
    assert np.allclose(np.diff(many), 2.5 / 7)
    for duration, n in ((0.0, 3), (-1.0, 3), (float("nan"), 3), (1.0, -1)):
        with pytest.raises(ValueError):
            uniform_timestamps(duration, n)


@pytest.mark.parametrize(("min_pixels", "max_pixels"), [(MIN_PIXELS, MAX_PIXELS), (4 * 784, 16 * 784), (784, 9 * 784)])
@pytest.mark.parametrize("name", ["gop16", "large"])
def test_frames_are_resized_to_multiples_of_28_within_budget(
    clips: dict[str, Clip], min_pixels: int, max_pixels: int, name: str
) -> None:
    clip = clips[name]
    with_budget = FrameSampler(min_pixels=min_pixels, max_pixels=max_pixels)
    for frame in with_budget.fetch(clip.path, [0.0, 0.9, 1.7]):
        width, height = frame.image.size
        assert width % IMAGE_FACTOR == 0 and height % IMAGE_FACTOR == 0
        assert min_pixels <= width * height <= max_pixels
        assert read_frame_index(frame.image) == frame.index


@pytest.mark.parametrize("size", [(64, 48), (1920, 1080), (28, 28), (30, 900), (333, 777)])
def test_resize_to_budget_matches_the_qwen_rules(size: tuple[int, int]) -> None:
    resized = resize_to_budget(Image.new("RGB", size), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    width, height = resized.size
    assert width % IMAGE_FACTOR == 0 and height % IMAGE_FACTOR == 0
    assert MIN_PIXELS <= width * height <= MAX_PIXELS
    assert resized.mode == "RGB"


def test_from_config_uses_the_dialogue_pixel_budget(clips: dict[str, Clip]) -> None:
    config = DecodingConfig(min_pixels=4 * 784, max_pixels=16 * 784, max_open_videos=3, decode_timeout_s=5.0)
    (frame,) = FrameSampler.from_config(config).fetch(clips["large"].path, [1.0])
    assert frame.image.size == (112, 84) and read_frame_index(frame.image) == 10


def test_constructor_rejects_bad_limits() -> None:
    for kwargs in (
        {"min_pixels": 0, "max_pixels": 10},
        {"min_pixels": 20, "max_pixels": 10},
        {"min_pixels": 10, "max_pixels": 20, "max_open_videos": 0},
        {"min_pixels": 10, "max_pixels": 20, "decode_timeout_s": 0.0},
    ):
        with pytest.raises(ValueError):
            FrameSampler(**kwargs)


def test_reader_cache_is_a_bounded_lru(clips: dict[str, Clip], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=frames.__name__)
    lru = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_open_videos=2)
    small = [clips[f"small{i}"] for i in range(5)]
    a, b, c = (str(clip.path) for clip in small[:3])
    lru.info(a)
    lru.info(b)
    lru.fetch(a, [0.0])  # a becomes the most recently used ...
    lru.info(c)  # ... so b is the one evicted
    assert lru.open_paths == (a, c)
    assert f"evicted reader of {b}" in caplog.text
    for clip in small * 3:
        assert_frames_match(lru.fetch(clip.path, [0.3, 10.0]), clip, [0.3, 10.0])
        assert len(lru.open_paths) <= 2
    lru.close()
    assert lru.open_paths == ()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc/self/fd (Linux)")
def test_evicted_readers_release_their_files_at_once(clips: dict[str, Clip]) -> None:
    """A reader's decoding generators refer back to it; eviction closes it rather than wait for the cyclic GC."""
    lru = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_open_videos=2)
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for clip in [clips[f"small{i}"] for i in range(5)] * 3:
            assert_frames_match(lru.fetch(clip.path, [0.3, 10.0]), clip, [0.3, 10.0])
        assert len(os.listdir("/proc/self/fd")) <= before + 2  # the two open readers' files, no more
        lru.close()
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("name", "error"),
    [("zero", VideoUnreadableError), ("text", VideoUnreadableError), ("folder", VideoUnreadableError)],
)
def test_unreadable_files_raise_with_the_path(
    sampler: FrameSampler, broken: dict[str, Path], name: str, error: type[VideoError]
) -> None:
    path = broken[name]
    for call in (lambda: sampler.info(path), lambda: sampler.fetch(path, [0.0])):
        with pytest.raises(error) as caught:
            call()
        assert caught.value.path == str(path) and str(path) in str(caught.value)
        assert caught.value.reason == "unreadable"
    assert str(path) not in sampler.open_paths


def test_missing_file_raises_not_found(sampler: FrameSampler, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.mp4"
    with pytest.raises(VideoNotFoundError, match=r"missing\.mp4") as caught:
        sampler.fetch(path, [0.0])
    assert caught.value.reason == "missing" and caught.value.path == str(path)


def test_garbage_frame_data_fails_only_the_frames_it_breaks(broken: dict[str, Path]) -> None:
    """The last three coded frames are random bytes: frames the decoder cannot rebuild are ``decode_failed``,
    counted per video, and every other frame is still served by the same reader."""
    own = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    path = str(broken["garbage"])
    info = own.info(path)
    assert info.num_frames == 30
    lost = []
    for index in range(info.num_frames):
        try:
            (frame,) = own.fetch(path, [info.frame_time(index)])
        except DecodeFailedError as error:
            assert error.reason == "decode_failed" and path in str(error) and f"{index} (" in str(error)
            lost.append(index)
            continue
        if index < 27:  # before the damage every frame is intact
            assert read_frame_index(frame.image) == index
    assert lost and min(lost) >= 27
    assert own.lost_frames(path) == len(lost) == own.stats().frames_lost
    assert own.open_paths == (path,)  # the reader was kept: damage is not a reason to reopen the file
    decoded = own.stats().frames_decoded
    with pytest.raises(DecodeFailedError):  # a lost frame stays lost, without decoding its GOP again
        own.fetch(path, [0.0, info.frame_time(lost[0])])
    assert own.stats().frames_decoded == decoded
    assert [read_frame_index(f.image) for f in own.fetch(path, [0.0, 0.5])] == [0, 15]


def test_errors_survive_pickling_with_class_path_and_reason() -> None:
    reasons = {
        VideoNotFoundError: "missing",
        VideoUnreadableError: "unreadable",
        EmptyVideoError: "empty",
        DecodeTimeoutError: "decode_timeout",
        DecodeFailedError: "decode_failed",
    }
    for cls, reason in reasons.items():
        error = pickle.loads(pickle.dumps(cls("/videos/a.mp4", "what happened")))
        assert type(error) is cls and isinstance(error, VideoError) and error.reason == reason
        assert (error.path, str(error)) == ("/videos/a.mp4", "/videos/a.mp4: what happened")


def test_concurrent_fetches_from_many_threads_return_the_right_frames(clips: dict[str, Clip]) -> None:
    shared = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_open_videos=2)  # evicts under load too
    names = ["gop16", "default_gop", "ntsc"]
    rng = random.Random(1)
    jobs = [(clips[rng.choice(names)], [rng.uniform(-0.5, 4.0) for _ in range(rng.randint(1, 6))]) for _ in range(96)]

    def run(job: tuple[Clip, list[float]]) -> tuple[Clip, list[float], list[TimedFrame]]:
        clip, timestamps = job
        result = shared.fetch(clip.path, timestamps)
        assert len(shared.open_paths) <= 2
        return clip, timestamps, result

    with ThreadPoolExecutor(max_workers=8) as pool:
        for clip, timestamps, result in pool.map(run, jobs):
            assert_frames_match(result, clip, timestamps)
    assert len(shared.open_paths) <= 2


def test_threads_asking_for_an_unopened_video_at_once_share_one_reader(
    clips: dict[str, Clip], broken: dict[str, Path]
) -> None:
    """A batch starts with every decode thread asking for the same few videos: each is opened once."""
    shared = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    jobs = [(clips[name], [0.5 * i]) for i in range(4) for name in ("gop16", "ntsc")]
    start = threading.Barrier(len(jobs))

    def run(job: tuple[Clip, list[float]]) -> tuple[Clip, list[float], list[TimedFrame]]:
        clip, timestamps = job
        start.wait(timeout=10)
        return clip, timestamps, shared.fetch(clip.path, timestamps)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for clip, timestamps, result in pool.map(run, jobs):
            assert_frames_match(result, clip, timestamps)
    assert shared.stats().videos_opened == 2

    path = broken["text"]  # opening fails: the scan finds no video stream
    failing = threading.Barrier(4)

    def fail(_: int) -> VideoError:
        failing.wait(timeout=10)
        with pytest.raises(VideoError) as caught:
            shared.fetch(path, [0.0])
        return caught.value

    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = list(pool.map(fail, range(4)))
    assert all(error.path == str(path) for error in errors)  # the opener's error reaches every waiter
    with pytest.raises(VideoError):  # and is not kept: a later call tries the file again
        shared.fetch(path, [0.0])


@pytest.fixture
def slow_first_decode(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Make the first decode hang until released (the only test seam); later decodes are real."""
    entered, release = threading.Event(), threading.Event()
    real = frames.sampler._decode_batch

    def decode(reader: object, indices: list[int]) -> np.ndarray:
        if not entered.is_set():
            entered.set()
            release.wait(timeout=10)
        return real(reader, indices)

    monkeypatch.setattr(frames.sampler, "_decode_batch", decode)
    yield entered
    release.set()  # let the abandoned thread finish


def test_decode_timeout_abandons_the_reader(clips: dict[str, Clip], slow_first_decode: threading.Event) -> None:
    clip = clips["gop16"]
    path = str(clip.path)
    impatient = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, decode_timeout_s=0.3)
    with pytest.raises(DecodeTimeoutError) as caught:
        impatient.fetch(path, [1.0])
    assert caught.value.reason == "decode_timeout" and path in str(caught.value)
    assert path not in impatient.open_paths
    assert_frames_match(impatient.fetch(path, [1.0]), clip, [1.0])  # a fresh reader serves the next call
    assert impatient.open_paths == (path,)


def test_a_call_queued_behind_a_timeout_reopens_the_video(
    clips: dict[str, Clip], slow_first_decode: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=frames.__name__)
    clip = clips["gop16"]
    impatient = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, decode_timeout_s=1.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(impatient.fetch, clip.path, [0.0])
        assert slow_first_decode.wait(timeout=5)
        second = pool.submit(impatient.fetch, clip.path, [2.0])  # waits on the video's lock, then must not reuse
        with pytest.raises(DecodeTimeoutError):
            first.result()
        assert_frames_match(second.result(timeout=10), clip, [2.0])
    assert "abandoned while this call waited" in caplog.text
