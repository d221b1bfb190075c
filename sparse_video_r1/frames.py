"""Decode the frames a dialogue asks for, by timestamp, from videos kept open between turns.

A dialogue asks for a few frames per turn from the same video, and the agent loop serves many dialogues
from a thread pool, so :class:`FrameSampler` opens each video once and keeps a bounded LRU cache of decord
readers. Decord readers are not thread-safe, so every open video carries its own lock; different videos
decode in parallel. Each decode runs in a worker thread with a timeout, because one corrupt file must not
stall a whole rollout batch.

Timestamps map to frames as ``floor(t * fps)`` under a constant-frame-rate assumption (decord's average fps);
each returned frame carries the *actual* timestamp ``index / fps`` so the model is told what it really saw.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import decord
import numpy as np
from PIL import Image
from qwen_vl_utils import smart_resize

from sparse_video_r1.config import IMAGE_FACTOR, DialogueConfig

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A timestamp this close (in frames) below a frame boundary counts as that frame. Without it
#: ``floor((i / fps) * fps)`` is ``i - 1`` for ~2% of frames at 30 fps, so a returned timestamp would not
#: fetch its own frame again.
_BOUNDARY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    """What a video offers: ``num_frames`` frames at a constant ``fps``; ``duration = num_frames / fps`` seconds."""

    path: str
    num_frames: int
    fps: float
    duration: float


@dataclass(frozen=True)
class TimedFrame:
    """One decoded frame; ``timestamp`` is the frame's own time ``index / fps``, not the time asked for."""

    timestamp: float
    index: int
    image: Image.Image


class VideoError(RuntimeError):
    """A video could not be served; ``reason`` is a short slug for metrics and the message names the path."""

    reason: ClassVar[str] = "video_error"

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[type[VideoError], tuple[str, str]]:
        # Ray pickles exceptions across workers; the default reduce would call __init__ with the message only.
        return type(self), (self.path, self.detail)


class VideoNotFoundError(VideoError):
    reason = "missing"


class VideoUnreadableError(VideoError):
    reason = "unreadable"


class EmptyVideoError(VideoError):
    reason = "empty"


class DecodeTimeoutError(VideoError):
    reason = "decode_timeout"


class DecodeFailedError(VideoError):
    reason = "decode_failed"


def frame_index(info: VideoInfo, timestamp: float) -> int:
    """The frame shown at ``timestamp`` seconds: ``floor(t * fps)`` clamped to ``[0, num_frames - 1]``."""
    if not math.isfinite(timestamp):
        raise ValueError(f"{info.path}: timestamp must be finite, got {timestamp}")
    position = timestamp * info.fps + _BOUNDARY_TOLERANCE
    if position >= info.num_frames:  # also catches t * fps overflowing to +inf
        return info.num_frames - 1
    if position < 1:  # also catches -inf
        return 0
    return math.floor(position)


def uniform_timestamps(duration: float, n: int) -> list[float]:
    """Centres of ``n`` equal segments of ``[0, duration]``, ascending: the usual uniform-sampling baseline."""
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be finite and > 0, got {duration}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [(i + 0.5) * duration / n for i in range(n)]


def resize_to_budget(image: Image.Image, *, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize exactly as Qwen2.5-VL's processor would (sides multiples of 28, area within budget), so it won't again."""
    height, width = smart_resize(
        image.height, image.width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
    )
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


@dataclass
class _OpenVideo:
    """A cached decord reader; ``abandoned`` is set once a timed-out or failed call gives the reader up."""

    info: VideoInfo
    reader: Any  # decord.VideoReader; not thread-safe, only use it while holding ``lock``
    lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False


def _decode_batch(reader: Any, indices: list[int]) -> np.ndarray:
    """All ``indices`` in one decord call (decord seeks once per GOP rather than once per frame)."""
    return reader.get_batch(indices).asnumpy()


def _first_line(error: BaseException) -> str:
    """Decord errors carry multi-line C++ traces; the first line says what went wrong."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def _run_with_timeout(fn: Callable[[], _T], *, path: str, what: str, timeout_s: float) -> _T:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s`` for it.

    A thread stuck inside decord's C code cannot be killed, only abandoned: on timeout it keeps running (and
    holding its reader) in the background, and being a daemon it never blocks interpreter exit.
    """
    future: futures.Future[_T] = futures.Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as error:  # handed to the waiting thread, which re-raises it
            future.set_exception(error)

    threading.Thread(target=work, name=f"decord-{what}", daemon=True).start()
    done, _ = futures.wait([future], timeout=timeout_s)
    if not done:
        raise DecodeTimeoutError(path, f"{what} took longer than {timeout_s}s; its decord thread was abandoned")
    return future.result()


class FrameSampler:
    """Serve frames by timestamp from a bounded LRU cache of open decord readers; safe to share between threads."""

    def __init__(
        self, *, min_pixels: int, max_pixels: int, max_open_videos: int = 16, decode_timeout_s: float = 30.0
    ) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if max_open_videos < 1:
            raise ValueError(f"max_open_videos must be >= 1, got {max_open_videos}")
        if not decode_timeout_s > 0:
            raise ValueError(f"decode_timeout_s must be > 0, got {decode_timeout_s}")
        self._min_pixels = min_pixels
        self._max_pixels = max_pixels
        self._max_open_videos = max_open_videos
        self._decode_timeout_s = decode_timeout_s
        self._cache: OrderedDict[str, _OpenVideo] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: DialogueConfig) -> FrameSampler:
        return cls(
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
            max_open_videos=config.max_open_videos,
            decode_timeout_s=config.decode_timeout_s,
        )

    @property
    def open_paths(self) -> tuple[str, ...]:
        """Paths with a cached reader, least recently used first (for tests and debugging)."""
        with self._cache_lock:
            return tuple(self._cache)

    def info(self, path: str | os.PathLike[str]) -> VideoInfo:
        """Frame count, fps and duration; opens (and caches) the video."""
        return self._open(os.fspath(path)).info

    def fetch(self, path: str | os.PathLike[str], timestamps: Sequence[float]) -> list[TimedFrame]:
        """The distinct frames shown at ``timestamps``, sorted by index, each resized under the pixel budget."""
        key = os.fspath(path)
        bad = [t for t in timestamps if not math.isfinite(t)]
        if bad:
            raise ValueError(f"{key}: timestamps must be finite, got {bad}")
        info = self.info(key)
        indices = sorted({frame_index(info, t) for t in timestamps})
        if not indices:
            return []
        batch = self._decode(key, indices)
        return [
            TimedFrame(
                timestamp=index / info.fps,
                index=index,
                image=resize_to_budget(
                    Image.fromarray(pixels), min_pixels=self._min_pixels, max_pixels=self._max_pixels
                ),
            )
            for index, pixels in zip(indices, batch, strict=True)
        ]

    def close(self) -> None:
        """Drop every cached reader (decord closes a file when its reader is garbage-collected)."""
        with self._cache_lock:
            self._cache.clear()

    def _decode(self, key: str, indices: list[int]) -> np.ndarray:
        while True:
            video = self._open(key)
            with video.lock:
                if video.abandoned:  # a call we queued behind gave this reader up; open a fresh one
                    logger.debug("reader of %s was abandoned while this call waited for it; reopening", key)
                    continue
                try:
                    return _run_with_timeout(
                        functools.partial(_decode_batch, video.reader, indices),
                        path=key,
                        what=f"decoding frames {indices}",
                        timeout_s=self._decode_timeout_s,
                    )
                except DecodeTimeoutError:
                    self._abandon(key, video)
                    raise
                except Exception as error:
                    # After a failed batch a reader's decoder state is suspect; the next call reopens the file.
                    self._abandon(key, video)
                    raise DecodeFailedError(key, f"decord failed on frames {indices}: {_first_line(error)}") from error

    def _abandon(self, key: str, video: _OpenVideo) -> None:
        video.abandoned = True
        with self._cache_lock:
            if self._cache.get(key) is video:
                del self._cache[key]

    def _open(self, key: str) -> _OpenVideo:
        with self._cache_lock:
            video = self._cache.get(key)
            if video is not None:
                self._cache.move_to_end(key)
                return video
        video = self._load(key)  # outside the lock: opening one video must not block fetches from others
        with self._cache_lock:
            existing = self._cache.get(key)
            if existing is not None:  # another thread opened it meanwhile; keep a single reader per video
                self._cache.move_to_end(key)
                return existing
            self._cache[key] = video
            while len(self._cache) > self._max_open_videos:
                evicted, _ = self._cache.popitem(last=False)
                logger.debug("evicted reader of %s (more than %d videos open)", evicted, self._max_open_videos)
        return video

    def _load(self, key: str) -> _OpenVideo:
        if not os.path.exists(key):
            raise VideoNotFoundError(key, "no such file")
        if os.path.isfile(key) and os.path.getsize(key) == 0:
            raise VideoUnreadableError(key, "file is empty (0 bytes)")
        try:
            reader = _run_with_timeout(
                lambda: decord.VideoReader(key, ctx=decord.cpu(0), num_threads=1),
                path=key,
                what="opening the video",
                timeout_s=self._decode_timeout_s,
            )
        except DecodeTimeoutError:
            raise
        except Exception as error:
            raise VideoUnreadableError(key, f"decord cannot open it: {_first_line(error)}") from error
        num_frames, fps = len(reader), float(reader.get_avg_fps())
        if num_frames <= 0 or not (math.isfinite(fps) and fps > 0):
            raise EmptyVideoError(key, f"no usable frames ({num_frames} frames at {fps} fps)")
        return _OpenVideo(
            info=VideoInfo(path=key, num_frames=num_frames, fps=fps, duration=num_frames / fps), reader=reader
        )
