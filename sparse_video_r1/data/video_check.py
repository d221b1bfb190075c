"""Probe videos the way a rollout will read them, so unreadable ones are found before training, not at step 3,000.

A probe opens the file with the same :class:`~sparse_video_r1.env.frames.FrameSampler` the agent loop uses and
decodes its first, middle and last frames: that catches missing streams, broken indexes, truncated tails and
undecodable GOPs at either end. A failure is named by the sampler's ``VideoError`` reason slug (``missing``,
``unreadable``, ``empty``, ``decode_failed``, ``decode_timeout``); anything else the sampler raises is a bug
that would end a rollout sample as ``error``, so it is reported under ``error:<ExceptionClass>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sparse_video_r1.env.config import DecodingConfig
from sparse_video_r1.env.frames import FrameSampler, VideoError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoProblem:
    """Why one video cannot be served: the reason slug and the sampler's message (which names the path)."""

    path: str
    reason: str
    detail: str


def probe_video(sampler: FrameSampler, path: str) -> VideoProblem | None:
    """None when ``path`` serves its first, middle and last frames; else what went wrong."""
    try:
        info = sampler.info(path)
        sampler.fetch(path, [0.0, info.duration / 2, info.duration])
    except VideoError as error:
        return VideoProblem(path, error.reason, str(error))
    except Exception as error:  # an unnamed failure: exactly what this check exists to surface
        logger.exception("probing %s raised an unnamed error", path)
        return VideoProblem(path, f"error:{type(error).__name__}", f"{path}: {error}")
    return None


def check_videos(
    paths: Iterable[str], *, workers: int = 4, config: DecodingConfig | None = None
) -> dict[str, VideoProblem]:
    """Probe every distinct path (``workers`` at a time); the problems found, keyed by path.

    Frames are decoded at ``config``'s pixel budget (the defaults unless given), with its decode timeout,
    and are not kept: one pass over a dataset must not fill memory with frames nobody reads again.
    """
    config = config or DecodingConfig()
    distinct = list(dict.fromkeys(paths))
    sampler = FrameSampler(
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        max_open_videos=max(1, workers),
        decode_timeout_s=config.decode_timeout_s,
        frame_cache_bytes=0,
    )
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="video-check") as pool:
            results = list(pool.map(lambda path: probe_video(sampler, path), distinct))
    finally:
        sampler.close()
    problems = {problem.path: problem for problem in results if problem is not None}
    logger.info("checked %d videos: %d unreadable", len(distinct), len(problems))
    return problems
