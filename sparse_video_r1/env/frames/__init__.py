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

The parts: :mod:`.common` (timeline, errors, timestamp to frame), :mod:`.decoder` (the PyAV decoder of one
video and its pts index), :mod:`.readers` (the reader pool: LRU, one opening per video, abandonment on
timeout) and :mod:`.sampler` (:class:`FrameSampler`, its decoded-frame cache, :func:`shared_decoder`).
"""

from sparse_video_r1.env.frames.common import (
    DecodeFailedError,
    DecodeTimeoutError,
    EmptyVideoError,
    SamplerStats,
    TimedFrame,
    VideoError,
    VideoInfo,
    VideoNotFoundError,
    VideoUnreadableError,
    frame_index,
    resize_to_budget,
    uniform_timestamps,
)
from sparse_video_r1.env.frames.sampler import SHARED_DECODERS, FrameSampler, shared_decoder

__all__ = [
    "SHARED_DECODERS",
    "DecodeFailedError",
    "DecodeTimeoutError",
    "EmptyVideoError",
    "FrameSampler",
    "SamplerStats",
    "TimedFrame",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoUnreadableError",
    "frame_index",
    "resize_to_budget",
    "shared_decoder",
    "uniform_timestamps",
]
