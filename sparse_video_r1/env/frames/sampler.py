"""The frame sampler: frames by timestamp from the reader pool, through a process-wide cache of decoded frames
that merges the requests of a GRPO group into one decoding pass; and the per-process shared sampler."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent import futures

import numpy as np
from PIL import Image

from sparse_video_r1.env.config import DecodingConfig, check_decoding
from sparse_video_r1.env.frames.common import (
    DecodeFailedError,
    DecodeTimeoutError,
    SamplerStats,
    TimedFrame,
    VideoInfo,
    _first_line,
    frame_index,
    resize_to_budget,
)
from sparse_video_r1.env.frames.decoder import _Reader
from sparse_video_r1.env.frames.readers import ReaderPool, _OpenVideo, _run_with_timeout

logger = logging.getLogger(__name__)


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
        check_decoding(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            max_open_videos=max_open_videos,
            decode_timeout_s=decode_timeout_s,
        )
        if frame_cache_bytes < 0:
            raise ValueError(f"frame_cache_bytes must be >= 0, got {frame_cache_bytes}")
        if merge_window_s < 0:
            raise ValueError(f"merge_window_s must be >= 0, got {merge_window_s}")
        self._merge_window_s = merge_window_s
        self._min_pixels = min_pixels
        self._max_pixels = max_pixels
        self._decode_timeout_s = decode_timeout_s
        self._frames = _FrameCache(frame_cache_bytes)
        self._stats = SamplerStats()
        self._lock = threading.Lock()  # guards the two above, the readers' maps and every video's ``wanted``
        make_reader = functools.partial(_Reader, min_pixels=min_pixels, max_pixels=max_pixels)
        self._readers = ReaderPool(
            self._lock, self._count, make_reader, max_open=max_open_videos, timeout_s=decode_timeout_s
        )

    @property
    def min_pixels(self) -> int:
        """The smallest frame this sampler returns (pixels); also the size of a placeholder frame."""
        return self._min_pixels

    @classmethod
    def from_config(cls, config: DecodingConfig) -> FrameSampler:
        """A sampler with ``config``'s settings (see :func:`shared_decoder` for the per-process one)."""
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
            return tuple(self._readers.videos)

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
        return self._readers.open(os.fspath(path)).info

    def fetch(self, path: str | os.PathLike[str], timestamps: Sequence[float]) -> list[TimedFrame]:
        """The distinct frames shown at ``timestamps``, sorted by index, each resized under the pixel budget."""
        key = os.fspath(path)
        bad = [t for t in timestamps if not math.isfinite(t)]
        if bad:
            raise ValueError(f"{key}: timestamps must be finite, got {bad}")
        video = self._readers.open(key)
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
            video = self._readers.videos.get(os.fspath(path))
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
            videos = self._readers.drain()
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
            video = self._readers.open(key)
            if merge:
                with self._lock:
                    video.wanted.update(missing)
            with video.lock:
                try:
                    if video.abandoned:  # a call we queued behind gave this reader up; open a fresh one
                        logger.debug("reader of %s was abandoned while this call waited for it; reopening", key)
                        continue
                    done = self._decode_pass(key, video, missing, merge)
                    if done is not None:
                        return done
                    merge = False  # another request's frame may be the broken one: ours alone, on a fresh reader
                finally:
                    if video.retired and not video.stuck:  # evicted while this call used it
                        video.reader.close()

    def _decode_pass(
        self, key: str, video: _OpenVideo, missing: list[int], merge: bool
    ) -> dict[int, Image.Image] | None:
        """One pass over ``video`` (its lock held) for ``missing``; None when a merged pass failed (retry alone)."""
        if merge and self._merge_window_s:
            self._wait_for_siblings(key, missing)
        done, todo, batch = self._take_batch(key, video, missing, merge)
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
            logger.debug("merged decode of %s failed; retrying frames %s alone", key, todo)
            return None
        lost = [i for i in todo if i not in images]
        if lost:
            raise self._lost_error(key, video.info, lost, len(video.lost))
        done.update((i, images[i]) for i in todo)
        return done

    def _wait_for_siblings(self, key: str, missing: list[int]) -> None:
        """Let the other requests for this video queue up for this pass, unless all of ours are decoded already."""
        with self._lock:
            pending = any((key, i) not in self._frames for i in missing)
        if pending:
            time.sleep(self._merge_window_s)

    def _take_batch(
        self, key: str, video: _OpenVideo, missing: list[int], merge: bool
    ) -> tuple[dict[int, Image.Image], list[int], list[int]]:
        """Our frames already cached (the pass we waited behind may have decoded them), those left to decode, and
        the batch to decode: those, plus (merging) every frame other requests queued on this video want."""
        with self._lock:
            done = {i: image for i in missing if (image := self._frames.get((key, i))) is not None}
            todo = [i for i in missing if i not in done]
            batch = todo
            if merge and todo:
                batch = sorted({*todo, *(i for i in video.wanted if (key, i) not in self._frames)})
                video.wanted.clear()  # every wanted frame is now cached or in this batch
            self._count(cache_hits=len(done))
        return done, todo, batch

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
            self._readers.abandon(key, video)
            raise
        except Exception as error:
            # After a failed batch a decoder's state is suspect; the next call reopens the file.
            self._readers.abandon(key, video)
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


#: How many decoding settings keep a sampler and pool per process; the least recently used beyond it is shut down.
SHARED_DECODERS = 4
_shared: OrderedDict[DecodingConfig, tuple[FrameSampler, futures.ThreadPoolExecutor]] = OrderedDict()
_shared_lock = threading.Lock()


def shared_decoder(config: DecodingConfig) -> tuple[FrameSampler, futures.ThreadPoolExecutor]:
    """The process's frame sampler and decode pool for ``config``, keyed on the decoding settings alone.

    verl builds a new agent loop object for every sample, so open videos, decoded frames and decode threads
    must live at process level to be reused across samples and bounded in number; dialogues that differ only
    in their rules (the evaluation's uniform baselines) share them. Beyond :data:`SHARED_DECODERS` settings
    the least recently used pair is closed: its pool shut down (running decodes finish) and its readers and
    cached frames dropped.
    """
    with _shared_lock:
        if config in _shared:
            _shared.move_to_end(config)
            return _shared[config]
        pool = futures.ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="svr1-decode")
        _shared[config] = pair = (FrameSampler.from_config(config), pool)
        evicted = [_shared.popitem(last=False)[1] for _ in range(len(_shared) - SHARED_DECODERS)]
    for sampler, old_pool in evicted:
        old_pool.shutdown(wait=False)
        sampler.close()
    return pair
