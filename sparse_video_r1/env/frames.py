"""Decode the frames a dialogue asks for, by timestamp, from videos kept open between turns.

A dialogue asks for a few frames per turn from the same video, and the agent loop serves many dialogues
from a thread pool, so :class:`FrameSampler` opens each video once and keeps a bounded LRU cache of open
readers. A reader is not thread-safe, so every open video carries its own lock; different videos decode in
parallel. Each decode runs in a worker thread with a timeout, because one corrupt file must not stall a
whole rollout batch.

What a fetch costs is decoding: every frame from the keyframe before a requested one up to it, so the
sampler is built to decode each stretch of video as few times as possible (``benchmarks/`` measures it):

* Readers are PyAV decoders driven from here, not decord: decord spends 4-30 ms on every seek (it rewinds
  to the start and re-reads packets ahead on each jump), several times the cost of decoding the frames
  themselves at NExT-QA's 640x480, while a PyAV seek costs well under a millisecond.
* Frames are scaled to the pixel budget by swscale in the same step that converts them to RGB, with one
  scaler kept per reader (~1 ms a frame at 640x480), where converting at full size and resizing with PIL
  cost 2-5 ms and a fresh scaler per frame twice as much.
* The GRPO rollouts of one question run in the same worker process and read the same video, often at the
  same or nearby timestamps. Decoded frames are kept in a byte-bounded LRU shared by the whole process
  (keyed by path and frame index), and requests that wait for the same video are merged into the next
  decoding pass, which visits their frames in order, so each GOP is decoded once for all of them.

Timing is by each frame's own presentation timestamp, never an average rate: opening a video scans its
packets once (the pts index, ~10 ms per minute of video) into the display time of every frame; frame ``i``
is the ``i``-th shown, a time maps to the frame whose display interval contains it, and each returned frame
is labelled with its own display time, so the model is told when what it saw was on screen. Times count
from the first frame shown (an edit list's cut or a late start is not part of the clip; frames an edit list
hides are decoded as references but never shown). AVI packets carry decode-order counters, not display
times, so an AVI's display order is taken from one full decode when it is opened (the decoder reorders
B-frames). Variable frame rate, gaps, open GOPs and malformed muxes whose pts run backwards are therefore
served frame-accurately (``tests/test_frame_accuracy.py`` checks a generated corpus of each).

Damage costs only what it breaks: a packet the decoder rejects is skipped and decoding goes on, and a frame
that never comes out of the decoder is *lost* (``DecodeFailedError`` for requests that need it, counted per
video); the reader stays open and serves every other frame.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image
from qwen_vl_utils import smart_resize

from sparse_video_r1.env.config import IMAGE_FACTOR, DialogueConfig

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A timestamp this close (in frames) below a frame boundary counts as that frame. Without it
#: ``floor((i / fps) * fps)`` is ``i - 1`` for ~2% of frames at 30 fps, so a returned timestamp would not
#: fetch its own frame again (and a pts converted to seconds may round just below the boundary).
_BOUNDARY_TOLERANCE = 1e-6

#: ffmpeg demuxers of still images (``*_pipe`` ones too): FFmpeg opens a PNG as a one-frame video, but a
#: file given as a video that holds a picture is a data error to report, not a clip to answer from.
_IMAGE_FORMATS = frozenset({"image2"})

#: Containers whose packet timestamps are decode-order counters, not display times: their display order
#: is what a full decode hands out (the decoder reorders B-frames), learnt once when the video is opened.
_DECODE_ORDER_FORMATS = frozenset({"avi"})

#: Packets a frame may come out of the decoder after its own (the reorder delay, with room to spare): a
#: frame not out by then is lost to damage. H.264 allows a reorder depth of 16.
_REORDER_SLACK = 32

#: swscale's bicubic filter, widened when it shrinks like PIL's: what the Qwen processor itself would use.
_INTERPOLATION = "BICUBIC"


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


class _Reader:
    """One open file, decoded with PyAV, that serves frames by display index at the pixel budget; not thread-safe.

    Opening builds the video's timeline once: every packet is scanned (the pts index), frame ``i`` is the
    ``i``-th shown, and ``times[i]`` is when it appears, from its own presentation timestamp. In containers
    whose packets carry decode-order counters instead of display times (AVI), the display order is what a
    full decode hands out (the decoder reorders B-frames), so opening one of those decodes it once.

    The reader remembers where the decoder is, so a frame ahead of it in the same GOP is reached by decoding
    on, without a seek. A packet the decoder rejects is skipped and decoding goes on (it resynchronises at
    the next decodable frame); a frame that never comes out is reported lost, not replaced.
    ``frames_decoded``, ``seeks`` and ``decode_errors`` count its work; ``index_seconds`` is the open's scan.
    """

    def __init__(self, path: str, *, min_pixels: int, max_pixels: int) -> None:
        began = time.perf_counter()
        self._container = av.open(path, metadata_errors="ignore")
        if self._container.format.name in _IMAGE_FORMATS or self._container.format.name.endswith("_pipe"):
            raise ValueError(f"a still image ({self._container.format.name}), not a video")
        if not self._container.streams.video:
            raise ValueError("no video stream")
        self._stream = self._container.streams.video[0]
        # One thread per decoder: the sampler's callers already decode different videos in parallel, and
        # frame threading would add a frame of latency per thread to every seek.
        self._stream.codec_context.thread_count = 1
        self.frames_decoded = 0
        self.seeks = 0
        self.decode_errors = 0
        self.closed = False
        self._decoding: Iterator[tuple[int, av.VideoFrame]] | None = None
        self._ready: dict[int, av.VideoFrame] = {}  # decoded, not yet handed out, at or past ``_floor``
        self._floor = 0  # frames before this one were passed over since the last seek
        self._fed = -1  # decode position of the last packet given to the decoder
        self._first: av.VideoFrame | None = None
        # Display order needs the decoder where packets carry no display times (AVI: decode-order counters).
        self._by_pts = self._container.format.name not in _DECODE_ORDER_FORMATS
        self._build_timeline()
        self.index_seconds = time.perf_counter() - began
        self.index_frames_decoded, self.frames_decoded = self.frames_decoded, 0
        self._rotation = 0
        # One scaler for the reader's life: ``frame.to_ndarray(width=...)`` builds a new swscale context
        # (filter tables included) per frame, which doubled the cost of handing a frame out.
        self._reformatter = VideoReformatter()
        self.width = self.height = 0
        if self.num_frames:
            self._size_output(min_pixels, max_pixels)

    def _build_timeline(self) -> None:
        """The pts index: each shown frame's key, time and decode position, and where decoding may start."""
        keys: list[int] = []  # per packet in decode order: pts (or dts where pts is not a display time)
        shown: list[int] = []  # decode positions of packets that make a shown frame
        keyframes: list[int] = []  # decode positions of keyframe packets
        durations: list[int] = []
        for packet in self._container.demux(self._stream):
            key = packet.pts if self._by_pts else packet.dts
            if key is None:  # the flush packet at the end, or a packet that cannot be placed
                if packet.size and self._by_pts:
                    self._by_pts = False  # pts missing: fall back to decode order (rescanned below)
                    self._container.seek(0, stream=self._stream, backward=True)
                    return self._build_timeline()
                continue
            position = len(keys)
            keys.append(key)
            durations.append(packet.duration or 0)
            if packet.is_keyframe:
                keyframes.append(position)
            if not packet.is_discard:  # decoded only as a reference for frames an edit list keeps
                shown.append(position)
        self._dpos_of: dict[int, int] = {key: position for position, key in enumerate(keys)}
        # Decode position of each shown frame, in display order.
        if self._by_pts:  # a pts given twice (a broken mux) is one display slot: the first packet's
            order = sorted({keys[position]: position for position in reversed(shown)}.values(), key=keys.__getitem__)
        else:
            order = self._display_order_by_decoding(keys)
        self._order = order
        self._slot_of: dict[int, int] = {keys[position]: slot for slot, position in enumerate(order)}
        self.num_frames = len(order)
        self.frames_indexed = len(keys)
        base = self._stream.time_base or Fraction(1, 1)
        stamps = [keys[position] for position in order] if self._by_pts else sorted(keys[p] for p in order)
        origin = stamps[0] if stamps else 0
        self.times = np.array([(stamp - origin) * base.numerator / base.denominator for stamp in stamps])
        rate = self._stream.average_rate or self._stream.guessed_rate
        intervals = np.diff(self.times)
        # The median interval (np.median's first call imports half a second of numpy; a sort does not).
        typical = (
            float(np.sort(intervals)[len(intervals) // 2]) if len(intervals) else (1 / float(rate) if rate else 0.0)
        )
        last = durations[order[-1]] * base.numerator / base.denominator if order else 0.0
        if not (last > 0 and (not typical or 0.5 * typical <= last <= 2 * typical)):
            last = typical  # encoders often leave the last packet's duration unset or wrong
        self.duration = float(self.times[-1] + last) if order else 0.0
        self.fps = float(rate) if rate else (self.num_frames / self.duration if self.duration > 0 else 0.0)
        # Where decoding may start: keyframes by their display rank (a keyframe an edit list hides ranks
        # just before the next shown frame); a seek to rank -1 starts at the first packet.
        ranks: list[float] = [-1.0]
        seek_to = [min(keys) if keys else 0]
        shown_keys = sorted(keys[p] for p in order) if self._by_pts else []
        for position in keyframes:
            slot = self._slot_of.get(keys[position])
            if slot is not None:
                ranks.append(float(slot))
            elif self._by_pts:
                ranks.append(bisect.bisect_left(shown_keys, keys[position]) - 0.5)
            else:
                continue
            seek_to.append(keys[position])
        pairs = sorted(set(zip(ranks, seek_to, strict=True)))
        self._key_ranks = [rank for rank, _ in pairs]
        self._key_seek = [stamp for _, stamp in pairs]

    def _display_order_by_decoding(self, keys: list[int]) -> list[int]:
        """Decode positions of the shown frames in the order a full decode hands them out (display order)."""
        self._container.seek(min(keys) if keys else 0, stream=self._stream, backward=True)
        order, seen = [], set()
        for key, frame in self._decode_keys(self._packets()):
            position = self._dpos_of.get(key)
            if position is not None and position not in seen:
                seen.add(position)
                order.append(position)
                if self._first is None:
                    self._first = frame
        return order

    def _packets(self) -> Iterator[av.Packet]:
        """The stream's packets from the current position; a demuxer error ends the pass (as end of file)."""
        demuxer = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except av.FFmpegError as error:
                logger.debug("demuxing stopped: %s", _first_line(error))
                return
            key = packet.pts if self._by_pts else packet.dts
            if key is not None:
                self._fed = self._dpos_of.get(key, self._fed)
            yield packet

    def _size_output(self, min_pixels: int, max_pixels: int) -> None:
        """Decode the first frame to learn its display rotation, then fix the budget size frames come out at."""
        frame = self._first
        if frame is None:
            self._seek(0)
            assert self._decoding is not None
            item = next(self._decoding, None)
            if item is None:
                raise ValueError("no frame could be decoded")
            frame = item[1]
            self._ready[item[0]] = frame
        self._first = None
        self._rotation = round(frame.rotation / 90) % 4  # quarter turns counter-clockwise, for display
        shown_height, shown_width = (frame.width, frame.height) if self._rotation % 2 else (frame.height, frame.width)
        self.height, self.width = smart_resize(
            shown_height, shown_width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels
        )

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """The frames at sorted, distinct ``indices`` as ``(n, height, width, 3)`` uint8 RGB, and those lost.

        The array holds the frames that decoded, in order; a lost frame (its packet damaged beyond what the
        decoder conceals) is listed instead.
        """
        out = np.empty((len(indices), self.height, self.width, 3), dtype=np.uint8)
        lost = []
        filled = 0
        for index in indices:
            frame = self._frame_at(index)
            if frame is None:
                lost.append(index)
                continue
            out[filled] = self._pixels(frame)
            filled += 1
        return out[:filled], lost

    def close(self) -> None:
        """Free the decoder, its frames and the file now (a second call does nothing); do not use it again."""
        self._decoding = None  # the generators refer back to the reader: dropping them breaks the cycle
        self._ready.clear()
        self._first = None
        if not self.closed:
            self.closed = True
            self._container.close()

    def _pixels(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = (self.height, self.width) if self._rotation % 2 else (self.width, self.height)
        pixels = self._reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation=_INTERPOLATION
        ).to_ndarray()
        return np.rot90(pixels, self._rotation) if self._rotation else pixels

    def _frame_at(self, target: int) -> av.VideoFrame | None:
        """Decode on to frame ``target``, seeking to its keyframe first when that is less work; None if lost."""
        if target not in self._ready:
            key = bisect.bisect_right(self._key_ranks, target) - 1
            key_position = self._dpos_of.get(self._key_seek[key], -1)
            if self._decoding is None or target < self._floor or key_position > self._fed:
                self._seek(key)
        self._floor = max(self._floor, target)
        for index in [i for i in self._ready if i < target]:
            del self._ready[index]
        # A frame comes out at most a reorder delay after its packet went in; past that it is lost.
        limit = self._order[target] + _REORDER_SLACK
        while target not in self._ready and self._fed <= limit:
            assert self._decoding is not None
            item = next(self._decoding, None)
            if item is None:
                break
            index, frame = item
            if index >= self._floor:
                self._ready[index] = frame
        frame = self._ready.pop(target, None)
        self._floor = target + 1  # handed out (or lost): asking for it again means decoding it again
        if frame is None:
            logger.debug("frame %d did not come out of the decoder: lost", target)
        return frame

    def _seek(self, key: int) -> None:
        """Start decoding at keyframe ``key``; step back a keyframe where the demuxer lands past it.

        A demuxer may pick keyframes by decode timestamp, which runs ahead of presentation with B-frames.
        """
        while True:
            self._container.seek(self._key_seek[key], stream=self._stream, backward=True)
            self.seeks += 1
            self._ready.clear()
            self._floor, self._fed = 0, -1
            packets = self._packets()
            first = next(packets, None)
            wanted = self._dpos_of.get(self._key_seek[key], 0)
            if first is None or self._fed <= wanted or key == 0:
                self._decoding = self._decode(first, packets)
                return
            key -= 1

    def _decode(self, first: av.Packet | None, packets: Iterator[av.Packet]) -> Iterator[tuple[int, av.VideoFrame]]:
        """(display index, frame) as the decoder hands frames out, from ``first`` then ``packets``."""
        for key, frame in self._decode_keys(itertools.chain([first] if first is not None else [], packets)):
            index = self._slot_of.get(key)
            if index is not None:  # a frame whose pts is not a shown frame's cannot be placed; skip it
                yield index, frame

    def _decode_keys(self, packets: Iterable[av.Packet]) -> Iterator[tuple[int, av.VideoFrame]]:
        """Every frame out of the decoder with the key (pts, or dts in decode-order containers) of its packet.

        A packet the decoder rejects is counted and skipped: the decoder resynchronises at the next
        decodable frame, so one bad packet costs only the frames that cannot be rebuilt without it.
        """
        for packet in packets:
            if not self._by_pts:
                packet.pts = packet.dts  # the decoder hands each frame out with its own packet's pts
            try:
                frames = packet.decode()
            except av.FFmpegError as error:
                self.decode_errors += 1
                logger.debug("skipping a packet the decoder rejects: %s", _first_line(error))
                continue
            for frame in frames:
                self.frames_decoded += 1
                if frame.pts is not None:
                    yield frame.pts, frame


@dataclass
class _OpenVideo:
    """A cached reader; ``abandoned`` is set once a timed-out or failed call gives the reader up.

    ``wanted`` holds frames that requests queued on ``lock`` still need; whoever decodes next takes them too.
    ``lost`` holds frames found undecodable (damaged packets): asking again fails at once instead of decoding
    their GOP every time.
    """

    info: VideoInfo
    reader: _Reader  # not thread-safe; only use it while holding ``lock``
    lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False
    wanted: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    retired: bool = False  # evicted while in use: whoever holds ``lock`` closes the reader when done
    stuck: bool = False  # a timed-out decode may still be running on the reader: never close it

    def retire(self) -> None:
        """Give the reader up for good and close it now, or as soon as the call using it is done.

        A reader's decoding generators refer back to it, so a dropped one lingers (file, decoder, frames)
        until the cyclic garbage collector runs; closing it frees them at once.
        """
        self.abandoned = True
        self.retired = True  # the call holding ``lock`` closes it when done ...
        if self.lock.acquire(blocking=False):  # ... unless nobody holds it (or that call just finished)
            try:
                if not self.stuck:
                    self.reader.close()
            finally:
                self.lock.release()


class _FrameCache:
    """Decoded frames keyed ``(path, index)``, least recently used evicted first, bounded in bytes.

    Not locked itself: the sampler calls it under its own lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, int]) -> Image.Image | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def put(self, key: tuple[str, int], image: Image.Image) -> None:
        size = _nbytes(image)
        if key in self._images or size > self.max_bytes:
            return
        self._images[key] = image
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._images.popitem(last=False)
            self._bytes -= _nbytes(evicted)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._images

    def clear(self) -> None:
        self._images.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        return self._bytes


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


def _decode_batch(reader: _Reader, indices: list[int]) -> tuple[np.ndarray, list[int]]:
    """All ``indices`` (sorted) in one pass, each GOP they touch decoded once: the frames, then those lost."""
    return reader.read(indices)


def _first_line(error: BaseException) -> str:
    """Decoder errors can carry multi-line traces; the first line says what went wrong."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def _run_with_timeout(fn: Callable[[], _T], *, path: str, what: str, timeout_s: float) -> _T:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s`` for it.

    A thread stuck inside the decoder's C code cannot be killed, only abandoned: on timeout it keeps running
    (and holding its reader) in the background, and being a daemon it never blocks interpreter exit.
    """
    future: futures.Future[_T] = futures.Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as error:  # handed to the waiting thread, which re-raises it
            future.set_exception(error)

    threading.Thread(target=work, name=f"decode-{what}", daemon=True).start()
    done, _ = futures.wait([future], timeout=timeout_s)
    if not done:
        raise DecodeTimeoutError(path, f"{what} took longer than {timeout_s}s; its decoding thread was abandoned")
    return future.result()


class FrameSampler:
    """Serve frames by timestamp from open videos and a cache of decoded frames; safe to share between threads.

    ``max_open_videos`` bounds the open readers (least recently used closed first); ``frame_cache_bytes``
    bounds the decoded frames kept for other requests (0 turns the cache, and merging requests, off).
    A decoding pass starts ``merge_window_s`` after it could, so that requests for the same video arriving
    meanwhile (the other rollouts of a GRPO group, released by the same generation batch) join it: a GOP
    two of them need is then decoded once instead of twice, for a few ms of latency against the 20-200 ms
    a pass costs.
    """

    def __init__(
        self,
        *,
        min_pixels: int,
        max_pixels: int,
        max_open_videos: int = 16,
        decode_timeout_s: float = 30.0,
        frame_cache_bytes: int = 256 * 2**20,
        merge_window_s: float = 0.005,
    ) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if max_open_videos < 1:
            raise ValueError(f"max_open_videos must be >= 1, got {max_open_videos}")
        if not decode_timeout_s > 0:
            raise ValueError(f"decode_timeout_s must be > 0, got {decode_timeout_s}")
        if frame_cache_bytes < 0:
            raise ValueError(f"frame_cache_bytes must be >= 0, got {frame_cache_bytes}")
        if merge_window_s < 0:
            raise ValueError(f"merge_window_s must be >= 0, got {merge_window_s}")
        self._merge_window_s = merge_window_s
        self._min_pixels = min_pixels
        self._max_pixels = max_pixels
        self._max_open_videos = max_open_videos
        self._decode_timeout_s = decode_timeout_s
        self._videos: OrderedDict[str, _OpenVideo] = OrderedDict()
        self._opening: dict[str, futures.Future[_OpenVideo]] = {}
        self._frames = _FrameCache(frame_cache_bytes)
        self._stats = SamplerStats()
        self._lock = threading.Lock()  # guards the four above and every video's ``wanted``; held briefly

    @classmethod
    def from_config(cls, config: DialogueConfig) -> FrameSampler:
        return cls(
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
            max_open_videos=config.max_open_videos,
            decode_timeout_s=config.decode_timeout_s,
            frame_cache_bytes=config.frame_cache_mb * 2**20,
        )

    @property
    def open_paths(self) -> tuple[str, ...]:
        """Paths with a cached reader, least recently used first (for tests and debugging)."""
        with self._lock:
            return tuple(self._videos)

    @property
    def cached_frames(self) -> tuple[int, int]:
        """How many decoded frames the cache holds, and their bytes."""
        with self._lock:
            return len(self._frames), self._frames.nbytes

    def stats(self) -> SamplerStats:
        """The work done since the sampler was made."""
        with self._lock:
            return self._stats

    def info(self, path: str | os.PathLike[str]) -> VideoInfo:
        """Frame count, fps and duration; opens (and caches) the video."""
        return self._open(os.fspath(path)).info

    def fetch(self, path: str | os.PathLike[str], timestamps: Sequence[float]) -> list[TimedFrame]:
        """The distinct frames shown at ``timestamps``, sorted by index, each resized under the pixel budget."""
        key = os.fspath(path)
        bad = [t for t in timestamps if not math.isfinite(t)]
        if bad:
            raise ValueError(f"{key}: timestamps must be finite, got {bad}")
        video = self._open(key)
        info = video.info
        indices = sorted({frame_index(info, t) for t in timestamps})
        if not indices:
            return []
        with self._lock:
            images = {i: image for i in indices if (image := self._frames.get((key, i))) is not None}
            self._count(requests=1, frames_served=len(indices), cache_hits=len(images))
            known_lost = sorted(video.lost.intersection(indices))
        if known_lost:
            raise self._lost_error(key, info, known_lost, len(video.lost))
        missing = [i for i in indices if i not in images]
        if missing:
            images.update(self._decode(key, missing))
        return [TimedFrame(timestamp=info.frame_time(index), index=index, image=images[index]) for index in indices]

    def lost_frames(self, path: str | os.PathLike[str]) -> int:
        """Frames of an open video found undecodable so far (0 when it is not open)."""
        with self._lock:
            video = self._videos.get(os.fspath(path))
            return len(video.lost) if video is not None else 0

    @staticmethod
    def _lost_error(key: str, info: VideoInfo, lost: list[int], total: int) -> DecodeFailedError:
        shown = ", ".join(f"{index} ({info.frame_time(index):.3f}s)" for index in lost[:8])
        return DecodeFailedError(
            key, f"frames {shown} cannot be decoded (damaged); {total} of {info.num_frames} frames of this video lost"
        )

    def close(self) -> None:
        """Close every open reader (those in use close when their call is done) and drop every cached frame."""
        with self._lock:
            videos = list(self._videos.values())
            self._videos.clear()
            self._frames.clear()
        for video in videos:
            video.retire()

    def _count(self, **increments: float) -> None:
        current = vars(self._stats)
        self._stats = SamplerStats(**{name: current[name] + increments.get(name, 0) for name in current})

    def _decode(self, key: str, missing: list[int]) -> dict[int, Image.Image]:
        """Decode ``missing`` frames, with those other requests queued on this video want (if the cache is on)."""
        merge = self._frames.max_bytes > 0
        while True:
            video = self._open(key)
            if merge:
                with self._lock:
                    video.wanted.update(missing)
            with video.lock:
                try:
                    if video.abandoned:  # a call we queued behind gave this reader up; open a fresh one
                        logger.debug("reader of %s was abandoned while this call waited for it; reopening", key)
                        continue
                    if merge and self._merge_window_s:
                        with self._lock:
                            pending = any((key, i) not in self._frames for i in missing)
                        if pending:
                            time.sleep(self._merge_window_s)  # let siblings queue up for this pass
                    with self._lock:
                        # Frames the pass we waited behind decoded for us count as hits too.
                        done = {i: image for i in missing if (image := self._frames.get((key, i))) is not None}
                        todo = [i for i in missing if i not in done]
                        batch = todo
                        if merge and todo:
                            batch = sorted({*todo, *(i for i in video.wanted if (key, i) not in self._frames)})
                            video.wanted.clear()  # every wanted frame is now cached or in this batch
                        self._count(cache_hits=len(done))
                    if not todo:
                        return done
                    lost = sorted(video.lost.intersection(todo))  # found lost by the pass we waited behind
                    if lost:
                        raise self._lost_error(key, video.info, lost, len(video.lost))
                    try:
                        images = self._decode_locked(key, video, batch)
                    except DecodeFailedError:
                        if len(batch) == len(todo):
                            raise
                        # Another request's frame may be the broken one; retry with ours alone on a fresh reader.
                        logger.debug("merged decode of %s failed; retrying frames %s alone", key, todo)
                        merge = False
                        continue
                    lost = [i for i in todo if i not in images]
                    if lost:
                        raise self._lost_error(key, video.info, lost, len(video.lost))
                    done.update((i, images[i]) for i in todo)
                    return done
                finally:
                    if video.retired and not video.stuck:  # evicted while this call used it
                        video.reader.close()

    def _decode_locked(self, key: str, video: _OpenVideo, batch: list[int]) -> dict[int, Image.Image]:
        """Decode ``batch`` with ``video``'s reader (its lock held) and cache the frames; lost ones are left out."""
        reader = video.reader
        decoded_before, seeks_before, errors_before = reader.frames_decoded, reader.seeks, reader.decode_errors
        try:
            pixels, lost = _run_with_timeout(
                functools.partial(_decode_batch, reader, batch),
                path=key,
                what=f"decoding frames {batch}",
                timeout_s=self._decode_timeout_s,
            )
        except DecodeTimeoutError:
            video.stuck = True
            self._abandon(key, video)
            raise
        except Exception as error:
            # After a failed batch a decoder's state is suspect; the next call reopens the file.
            self._abandon(key, video)
            raise DecodeFailedError(key, f"decoding frames {batch} failed: {_first_line(error)}") from error
        decoded = [index for index in batch if index not in set(lost)]
        images = {
            index: resize_to_budget(Image.fromarray(frame), min_pixels=self._min_pixels, max_pixels=self._max_pixels)
            for index, frame in zip(decoded, pixels, strict=True)
        }
        if lost:
            logger.warning("%s: frames %s cannot be decoded (damaged packets); serving the rest", key, lost)
        with self._lock:
            for index, image in images.items():
                self._frames.put((key, index), image)
            video.lost.update(lost)
            self._count(
                frames_decoded=reader.frames_decoded - decoded_before,
                seeks=reader.seeks - seeks_before,
                decode_errors=reader.decode_errors - errors_before,
                frames_lost=len(lost),
            )
        return images

    def _abandon(self, key: str, video: _OpenVideo) -> None:
        video.abandoned = True
        with self._lock:
            if self._videos.get(key) is video:
                del self._videos[key]

    def _open(self, key: str) -> _OpenVideo:
        """The video's reader, opened by one caller while the others asking for it wait for that one.

        Opening scans every packet of the file in Python. When a batch starts, every decode thread asks for
        the same few videos at once; each opening its own reader (all but one then thrown away) made opening
        47.9 % of the rollout benchmark's CPU on the GPU host, the scans' per-packet GIL hand-offs convoying.
        """
        with self._lock:
            video = self._videos.get(key)
            if video is not None:
                self._videos.move_to_end(key)
                return video
            waiting = self._opening.get(key)
            if waiting is None:
                opening = self._opening[key] = futures.Future()
        if waiting is not None:
            return waiting.result()  # the opener's error, if it failed, is this caller's too
        try:
            video = self._load(key)  # outside the lock: opening one video must not block fetches from others
        except BaseException as error:
            with self._lock:
                del self._opening[key]
            opening.set_exception(error)
            raise
        retiring: list[_OpenVideo] = []
        with self._lock:
            del self._opening[key]
            self._videos[key] = video
            self._count(videos_opened=1)
            while len(self._videos) > self._max_open_videos:
                evicted, old = self._videos.popitem(last=False)
                retiring.append(old)
                logger.debug("evicted reader of %s (more than %d videos open)", evicted, self._max_open_videos)
        for old in retiring:
            old.retire()
        opening.set_result(video)
        return video

    def _load(self, key: str) -> _OpenVideo:
        if not os.path.exists(key):
            raise VideoNotFoundError(key, "no such file")
        if os.path.isfile(key) and os.path.getsize(key) == 0:
            raise VideoUnreadableError(key, "file is empty (0 bytes)")
        try:
            reader = _run_with_timeout(
                functools.partial(_Reader, key, min_pixels=self._min_pixels, max_pixels=self._max_pixels),
                path=key,
                what="opening the video",
                timeout_s=self._decode_timeout_s,
            )
        except DecodeTimeoutError:
            raise
        except Exception as error:
            raise VideoUnreadableError(key, f"cannot open it: {_first_line(error)}") from error
        num_frames, fps, duration = reader.num_frames, reader.fps, reader.duration
        if num_frames <= 0 or not (math.isfinite(fps) and fps > 0) or not (math.isfinite(duration) and duration > 0):
            raise EmptyVideoError(key, f"no usable frames ({num_frames} frames at {fps} fps, {duration} s)")
        logger.debug(
            "indexed %s: %d frames, %.1f s, in %.1f ms (%d frames decoded for display order)",
            key,
            num_frames,
            duration,
            1e3 * reader.index_seconds,
            reader.index_frames_decoded,
        )
        with self._lock:
            self._count(index_seconds=reader.index_seconds, indexed_seconds=duration)
        info = VideoInfo(path=key, num_frames=num_frames, fps=fps, duration=duration, frame_times=reader.times)
        return _OpenVideo(info=info, reader=reader)
