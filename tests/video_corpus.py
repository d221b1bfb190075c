"""A corpus of small videos in the containers and timing cases public datasets hold, written by PyAV.

Every frame paints its own index (:func:`sparse_video_r1.synthetic.videos.index_image`) and is muxed with a known
presentation time, so a test can tell which picture a sampler returned and when it should be on screen. The
cases are the ones that broke timing by frame rate: AVI (MPEG-4 Part 2 with B-frames, H.264 with B-pyramid),
variable frame rate with gaps and jitter, an mp4 starting late or cut by an edit list, Matroska, WebM (VP9),
a rotated MOV, a one-frame file and open-GOP H.264. Clips are 64x48 and at most a few seconds long, so the
whole corpus is written in well under a second per file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from sparse_video_r1.synthetic.videos import index_image

WIDTH, HEIGHT = 64, 48


@dataclass(frozen=True)
class CorpusVideo:
    """A written file and what it holds: painted index ``shown[i]`` is the ``i``-th frame on screen, from ``times[i]``.

    ``times`` count seconds from the first frame shown (a start offset or an edit list moves the whole clip).
    """

    name: str
    path: Path
    shown: tuple[int, ...]
    times: tuple[float, ...]


def encode_video(
    path: Path,
    pts: Sequence[int],
    *,
    time_base: Fraction,
    width: int = WIDTH,
    height: int = HEIGHT,
    rate: int | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
    options: dict[str, str] | None = None,
    bframes: int | None = None,
    gop: int | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode frame ``i`` (painting ``i``) with presentation timestamp ``pts[i]`` in ``time_base``."""
    with av.open(str(path), mode="w", format=container_format) as container:
        if rate is None:
            rate = round(1 / time_base) if time_base.numerator == 1 else 25
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        if container_format != "avi":  # AVI has one tick per frame: its time base is the frame rate
            stream.time_base = time_base
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_image(index, width=width, height=height), format="rgb24")
            frame.pts, frame.time_base = value, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _x264(keyint: int, bframes: int = 3, extra: str = "") -> dict[str, str]:
    return {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}{extra}"}


def _cfr(name: str, path: Path, count: int, fps: int, **kwargs: object) -> CorpusVideo:
    encode_video(path, range(count), time_base=Fraction(1, fps), **kwargs)  # type: ignore[arg-type]
    return CorpusVideo(name, path, tuple(range(count)), tuple(i / fps for i in range(count)))


def vfr_pts_ms(seed: int = 0) -> list[int]:
    """~30 fps with +-5 ms jitter, a 0.2 s gap and a stretch at 10 fps: a phone recording's timestamps."""
    rng = random.Random(seed)
    pts, now = [], 0
    for index in range(60):
        pts.append(now)
        step = 33 + rng.randint(-5, 5)
        if index == 20:
            step = 200  # the gap
        elif 35 <= index < 42:
            step = 100  # a slow stretch
        now += step
    return pts


def _vfr(name: str, path: Path) -> CorpusVideo:
    pts = vfr_pts_ms()
    encode_video(path, pts, time_base=Fraction(1, 1000), options=_x264(12))
    return CorpusVideo(name, path, tuple(range(len(pts))), tuple(p / 1000 for p in pts))


def _late_start(name: str, path: Path) -> CorpusVideo:
    """First frame at 0.6 s (an mp4 edit list with an empty edit, as a cut or a delayed stream has)."""
    pts = [600 + 40 * i for i in range(40)]
    encode_video(path, pts, time_base=Fraction(1, 1000), options=_x264(10))
    return CorpusVideo(name, path, tuple(range(40)), tuple(p / 1000 - 0.6 for p in pts))


def _edit_cut(name: str, path: Path) -> CorpusVideo:
    """Frames 0-6 have negative pts: the edit list starts the clip at frame 7, mid-GOP (as a stream copy cut does)."""
    cut = 7
    pts = [i - cut for i in range(40)]
    encode_video(path, pts, time_base=Fraction(1, 25), options=_x264(10))
    return CorpusVideo(name, path, tuple(range(cut, 40)), tuple((i - cut) / 25 for i in range(cut, 40)))


#: name -> writer of that file under a folder.
WRITERS: dict[str, Callable[[Path], CorpusVideo]] = {
    "mpeg4_bframes.avi": lambda p: _cfr(
        "mpeg4_bframes.avi", p, 45, 25, codec="mpeg4", container_format="avi", bframes=2, gop=12
    ),
    "h264_bpyramid.avi": lambda p: _cfr(
        "h264_bpyramid.avi", p, 45, 25, container_format="avi", options=_x264(15, 3, ":b-pyramid=normal")
    ),
    "vfr.mp4": lambda p: _vfr("vfr.mp4", p),
    "late_start.mp4": lambda p: _late_start("late_start.mp4", p),
    "edit_cut.mp4": lambda p: _edit_cut("edit_cut.mp4", p),
    "h264.mkv": lambda p: _cfr("h264.mkv", p, 40, 30, container_format="matroska", options=_x264(12)),
    "vp9.webm": lambda p: _cfr("vp9.webm", p, 30, 30, codec="libvpx-vp9", container_format="webm", gop=10),
    "rotated.mov": lambda p: _cfr("rotated.mov", p, 30, 30, options=_x264(8), rotation=90),
    "one_frame.mp4": lambda p: _cfr("one_frame.mp4", p, 1, 30),
    "open_gop.mp4": lambda p: _cfr("open_gop.mp4", p, 48, 24, options=_x264(12, 3, ":open-gop=1")),
}


def write_corpus(folder: Path) -> dict[str, CorpusVideo]:
    """Every file of the corpus under ``folder``, keyed by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: write(folder / name) for name, write in WRITERS.items()}
