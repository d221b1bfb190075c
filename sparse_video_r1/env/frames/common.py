"""What the frame modules share: a video's timeline, a served frame, the work counters, the errors, and
mapping a timestamp to a frame and a frame to the pixel budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image
from qwen_vl_utils import smart_resize

from sparse_video_r1.env.config import IMAGE_FACTOR

#: A timestamp this close (in frames) below a frame boundary counts as that frame. Without it
#: ``floor((i / fps) * fps)`` is ``i - 1`` for ~2% of frames at 30 fps, so a returned timestamp would not
#: fetch its own frame again (and a pts converted to seconds may round just below the boundary).
_BOUNDARY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    """What a video offers: ``num_frames`` frames over ``duration`` seconds, ``fps`` on average.

    ``frame_times[i]`` is when frame ``i`` (the ``i``-th shown) appears, in seconds from the first frame, from
    its own presentation timestamp: frame rates vary, and :func:`frame_index` maps times through these. An
    info made without them (a generated clip) has frame ``i`` at ``i / fps``.
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    frame_times: np.ndarray | None = field(default=None, compare=False, repr=False)

    def frame_time(self, index: int) -> float:
        """When frame ``index`` appears, in seconds from the first frame."""
        return float(self.frame_times[index]) if self.frame_times is not None else index / self.fps


@dataclass(frozen=True)
class TimedFrame:
    """One decoded frame; ``timestamp`` is when the frame appears (its own pts), not the time asked for.

    ``image`` may be shared with other callers through the frame cache: treat it as read-only.
    """

    timestamp: float
    index: int
    image: Image.Image


@dataclass(frozen=True)
class SamplerStats:
    """Work a sampler has done, for benchmarks and rollout metrics: decoding is the cost, wall time follows it.

    ``frames_decoded`` counts every frame out of the decoder, including those decoded only to reach a
    requested one; ``cache_hits`` counts served frames found already decoded; ``videos_opened`` counts readers
    made (each one scans the file's packets: the pts index). ``index_seconds`` is the time those scans took,
    for ``indexed_seconds`` of video; ``frames_lost`` counts frames found undecodable (damaged packets), and
    ``decode_errors`` the packets the decoder rejected and decoding went past.
    """

    requests: int = 0
    frames_served: int = 0
    cache_hits: int = 0
    frames_decoded: int = 0
    seeks: int = 0
    videos_opened: int = 0
    frames_lost: int = 0
    decode_errors: int = 0
    index_seconds: float = 0.0
    indexed_seconds: float = 0.0


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
    """The frame on screen at ``timestamp`` seconds: the last one appearing at or before it, clamped to the video.

    Times map through each frame's own presentation time (``info.frame_times``), never an average rate; an
    info without them maps ``floor(t * fps)``.
    """
    if not math.isfinite(timestamp):
        raise ValueError(f"{info.path}: timestamp must be finite, got {timestamp}")
    if info.frame_times is not None:
        slack = _BOUNDARY_TOLERANCE * info.duration / max(info.num_frames, 1)
        found = int(np.searchsorted(info.frame_times, timestamp + slack, side="right")) - 1
        return min(max(found, 0), info.num_frames - 1)
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


def _first_line(error: BaseException) -> str:
    """Decoder errors can carry multi-line traces; the first line says what went wrong."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]
