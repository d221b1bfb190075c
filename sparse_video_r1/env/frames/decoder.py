"""The PyAV decoder of one open video: its per-frame pts index, seeking, and decoding frames at the pixel budget."""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from qwen_vl_utils import smart_resize

from sparse_video_r1.env.config import IMAGE_FACTOR
from sparse_video_r1.env.frames.common import _first_line

logger = logging.getLogger(__name__)

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
