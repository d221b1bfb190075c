"""The reader pool: open videos kept in a bounded LRU, each opened once however many callers ask for it at
once, every open and decode bounded by a timeout (a stuck decoder is abandoned, never waited on)."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import TypeVar

from sparse_video_r1.env.frames.common import (
    DecodeTimeoutError,
    EmptyVideoError,
    VideoInfo,
    VideoNotFoundError,
    VideoUnreadableError,
    _first_line,
)
from sparse_video_r1.env.frames.decoder import _Reader

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
Counter = Callable[..., None]
Opener = Callable[[str], _Reader]


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


class ReaderPool:
    """Open videos by path, least recently used closed first beyond ``max_open_videos``; safe between threads.

    ``lock`` is the sampler's: it guards this pool's maps as well as the sampler's own state (cache, counters,
    every video's ``wanted``), so the two stay consistent under one short-held lock. ``count`` adds to the
    sampler's counters; the pool calls it with ``lock`` held. ``make_reader`` opens a path, within ``timeout_s``;
    at most ``max_open`` videos stay open.
    """

    def __init__(
        self, lock: threading.Lock, count: Counter, make_reader: Opener, *, max_open: int, timeout_s: float
    ) -> None:
        self._lock, self._count, self._make_reader = lock, count, make_reader
        self._max_open_videos, self._timeout_s = max_open, timeout_s
        self.videos: OrderedDict[str, _OpenVideo] = OrderedDict()  # read and changed with ``lock`` held
        self._opening: dict[str, futures.Future[_OpenVideo]] = {}

    def open(self, key: str) -> _OpenVideo:
        """The video's reader, opened by one caller while the others asking for it wait for that one.

        Opening scans every packet of the file in Python. When a batch starts, every decode thread asks for
        the same few videos at once; each opening its own reader (all but one then thrown away) made opening
        47.9 % of the rollout benchmark's CPU on the GPU host, the scans' per-packet GIL hand-offs convoying.
        """
        with self._lock:
            video = self.videos.get(key)
            if video is not None:
                self.videos.move_to_end(key)
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
            self.videos[key] = video
            self._count(videos_opened=1)
            while len(self.videos) > self._max_open_videos:
                evicted, old = self.videos.popitem(last=False)
                retiring.append(old)
                logger.debug("evicted reader of %s (more than %d videos open)", evicted, self._max_open_videos)
        for old in retiring:
            old.retire()
        opening.set_result(video)
        return video

    def abandon(self, key: str, video: _OpenVideo) -> None:
        """Give ``video``'s reader up (a timed-out or failed call): the next caller opens the file afresh."""
        video.abandoned = True
        with self._lock:
            if self.videos.get(key) is video:
                del self.videos[key]

    def drain(self) -> list[_OpenVideo]:
        """Forget every open video and return them for retiring; call with ``lock`` held."""
        videos = list(self.videos.values())
        self.videos.clear()
        return videos

    def _load(self, key: str) -> _OpenVideo:
        if not os.path.exists(key):
            raise VideoNotFoundError(key, "no such file")
        if os.path.isfile(key) and os.path.getsize(key) == 0:
            raise VideoUnreadableError(key, "file is empty (0 bytes)")
        try:
            reader = _run_with_timeout(
                functools.partial(self._make_reader, key),
                path=key,
                what="opening the video",
                timeout_s=self._timeout_s,
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
