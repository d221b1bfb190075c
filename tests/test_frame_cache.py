"""The decoded-frame cache shared by a worker's dialogues, against a real H.264 file whose frames paint their index.

The rollouts of one GRPO group read the same video at nearby times; these tests pin that the frames they
share are decoded once, counted by the sampler itself, and that the cache stays within its byte bound.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sparse_video_r1.env.config import IMAGE_FACTOR, DecodingConfig
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.synthetic.videos import read_frame_index, write_index_video

MIN_PIXELS = 16 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 64 * IMAGE_FACTOR * IMAGE_FACTOR
FPS = 30.0
KEYINT = 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "k30.mp4"
    return write_index_video(path, num_frames=150, fps=FPS, width=128, height=96, keyframe_interval=KEYINT)


def sampler(cache_bytes: int, **kwargs: float) -> FrameSampler:
    return FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, frame_cache_bytes=cache_bytes, **kwargs)


def floor(indices: set[int]) -> int:
    """Frames decoded when every GOP the indices touch is decoded once, from its keyframe to the last one wanted."""
    keyframes = list(range(0, 150, KEYINT))
    last: dict[int, int] = {}
    for index in indices:
        key = keyframes[bisect.bisect_right(keyframes, index) - 1]
        last[key] = max(index, last.get(key, index))
    return sum(end - key + 1 for key, end in last.items())


def test_a_repeated_request_is_served_from_the_cache(clip: Path) -> None:
    frames = sampler(64 * 2**20)
    first = frames.fetch(clip, [1.0, 2.5])
    decoded = frames.stats().frames_decoded
    again = frames.fetch(clip, [1.0, 2.5])
    stats = frames.stats()
    assert [f.index for f in again] == [read_frame_index(f.image) for f in again] == [30, 75]
    assert [f.image for f in again] == [f.image for f in first]  # the same decoded images
    assert stats.frames_decoded == decoded and stats.cache_hits == 2 and stats.requests == 2


def test_without_the_cache_every_request_decodes(clip: Path) -> None:
    frames = sampler(0)
    frames.fetch(clip, [1.0])
    decoded = frames.stats().frames_decoded
    frames.fetch(clip, [1.0])
    assert frames.stats().frames_decoded > decoded and frames.stats().cache_hits == 0
    assert frames.cached_frames == (0, 0)


def test_a_group_of_concurrent_requests_decodes_each_gop_once(clip: Path) -> None:
    """Eight rollouts ask for overlapping frames at once: one merged pass per GOP, not one per rollout."""
    requests = [[0.5 + 0.1 * r, 2.2, 3.9 - 0.2 * r] for r in range(8)]
    wanted = {min(int(t * FPS + 1e-6), 149) for request in requests for t in request}
    shared, alone = sampler(64 * 2**20, merge_window_s=0.05), sampler(0)
    for frames in (shared, alone):
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda ts, f=frames: f.fetch(clip, ts), requests))
        for request, served in zip(requests, results, strict=True):
            assert [f.index for f in served] == [read_frame_index(f.image) for f in served]
            assert {f.index for f in served} == {min(int(t * FPS + 1e-6), 149) for t in request}
    # At most the floor (the decoder can hand out the last wanted frame before it has output every frame
    # counted up to it), and never anywhere near a second pass over a GOP.
    assert floor(wanted) - 2 <= shared.stats().frames_decoded <= floor(wanted)
    assert shared.stats().seeks <= 3  # the three GOPs 0, 1 and 2 the requests touch
    assert alone.stats().frames_decoded > 2 * floor(wanted)


def test_the_cache_stays_within_its_byte_bound(clip: Path) -> None:
    frames = sampler(0)
    one = frames.fetch(clip, [0.0])[0].image
    size = one.width * one.height * 3
    bounded = sampler(3 * size)
    for second in range(5):
        bounded.fetch(clip, [second + 0.5])
    count, nbytes = bounded.cached_frames
    assert count == 3 and nbytes == 3 * size
    bounded.fetch(clip, [0.5])  # the oldest was evicted: decoded again
    assert bounded.stats().cache_hits == 0


def test_the_config_sets_the_cache_size() -> None:
    assert FrameSampler.from_config(DecodingConfig(frame_cache_mb=0)).cached_frames == (0, 0)
    with pytest.raises(ValueError, match="frame_cache_mb"):
        DecodingConfig(frame_cache_mb=-1)
