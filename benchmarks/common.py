"""What the CPU benchmarks share: NExT-QA-shaped test videos, decode-work accounting, and output.

Speed claims are made as ratios taken within one run (our sampler against baselines and against the decode
floor, all on the same machine at the same moment), never as absolute thresholds: a shared 2-core machine
is too noisy for those.

Decode work is what the sampler's own counters say (:class:`~sparse_video_r1.env.frames.SamplerStats`), compared
with the floor: each GOP a request touches decoded once, from its keyframe to the last frame wanted in it.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import decord
import numpy as np
from av.video.reformatter import VideoReformatter

from sparse_video_r1.synthetic.videos import write_index_video

REPO = Path(__file__).resolve().parents[1]
#: Generated videos are kept here (git-ignored) so a rerun does not spend a minute re-encoding them.
DEFAULT_VIDEO_DIR = REPO / ".cache" / "benchmarks" / "videos"
DEFAULT_RESULTS_DIR = REPO / "docs" / "results" / "benchmarks"

#: NExT-QA's videos: 640x480 at ~30 fps, mostly 30-90 s long.
WIDTH, HEIGHT, FPS = 640, 480, 30.0
#: x264's default keyint (what most NExT-QA files have) and a short one, as some re-encoded datasets use.
KEYFRAME_INTERVALS = (250, 30)


@dataclass(frozen=True)
class VideoSpec:
    seconds: int
    keyframe_interval: int

    @property
    def num_frames(self) -> int:
        return int(self.seconds * FPS)

    def filename(self) -> str:
        return f"index_{self.seconds}s_k{self.keyframe_interval}_{WIDTH}x{HEIGHT}.mp4"


def ensure_videos(specs: Sequence[VideoSpec], folder: Path) -> list[Path]:
    """Write each spec's index video once (about 190 frames/s to encode on 2 cores); reuse it afterwards."""
    paths = []
    for spec in specs:
        path = folder / spec.filename()
        if not path.exists():
            print(f"encoding {path.name} ({spec.num_frames} frames) ...", file=sys.stderr, flush=True)
            partial = path.with_suffix(".partial.mp4")
            write_index_video(
                partial,
                num_frames=spec.num_frames,
                fps=FPS,
                width=WIDTH,
                height=HEIGHT,
                keyframe_interval=spec.keyframe_interval,
            )
            partial.rename(path)  # a killed run never leaves a truncated video under the final name
        paths.append(path)
    return paths


def keyframe_indices(path: Path) -> list[int]:
    """Indices (in presentation order) of the keyframes, read from the packets as the sampler reads them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
    order = {value: index for index, value in enumerate(sorted(pts))}
    return sorted({order[value] for value in keys} | {0})


def gop_of(keyframes: Sequence[int], index: int) -> int:
    """The keyframe that starts the GOP holding frame ``index``."""
    return keyframes[bisect.bisect_right(keyframes, index) - 1]


def floor_work(keyframes: Sequence[int], indices: Iterable[int]) -> int:
    """The least decoding that yields ``indices``: each GOP they touch, once, from its keyframe to the last one."""
    last_in_gop: dict[int, int] = {}
    for index in indices:
        key = gop_of(keyframes, index)
        last_in_gop[key] = max(index, last_in_gop.get(key, index))
    return sum(last - key + 1 for key, last in last_in_gop.items())


@dataclass(frozen=True)
class DecodeRates:
    """How fast this machine decodes one video, measured in the run that uses it.

    ``decode_fps``: frames/s PyAV's decoder (one thread, as the sampler runs it) goes through in order
    without converting them: the rate of the frames decoded only to reach a requested one.
    ``convert_ms``: time to hand one frame out as RGB at the pixel budget (swscale, as the sampler does).
    ``decord_sequential_fps``: frames/s decord reads in order as full-size RGB (the usual "decode speed").
    """

    decode_fps: float
    convert_ms: float
    decord_sequential_fps: float

    def floor_seconds(self, frames_decoded: int, frames_returned: int) -> float:
        return frames_decoded / self.decode_fps + frames_returned * self.convert_ms / 1e3


def measure_decode_rates(path: Path, *, width: int, height: int, span: int = 600, repeats: int = 3) -> DecodeRates:
    """Time ``span`` frames decoded in order (PyAV and decord) and converted at ``width``x``height``; best of 3."""
    best_decode = best_convert = best_decord = float("inf")
    for _ in range(repeats):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            decoded: list[av.VideoFrame] = []
            began = time.perf_counter()
            for frame in container.decode(stream):
                decoded.append(frame)
                if len(decoded) == span:
                    break
            best_decode = min(best_decode, (time.perf_counter() - began) / len(decoded))
            sample = decoded[:: max(1, len(decoded) // 60)]
            scaler = VideoReformatter()
            began = time.perf_counter()
            for frame in sample:
                scaler.reformat(frame, width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()
            best_convert = min(best_convert, (time.perf_counter() - began) / len(sample))
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        began = time.perf_counter()
        for start in range(0, span, 30):
            reader.get_batch(list(range(start, min(start + 30, span)))).asnumpy()
        best_decord = min(best_decord, (time.perf_counter() - began) / span)
    return DecodeRates(decode_fps=1 / best_decode, convert_ms=best_convert * 1e3, decord_sequential_fps=1 / best_decord)


class FloorDecoder:
    """The decode floor of a request, measured: each GOP it touches decoded once, seek not timed.

    For every GOP holding wanted frames it seeks to the keyframe (untimed), then times decoding in order up
    to the last wanted frame and converting the wanted ones at the budget size, with one scaler, as the
    sampler does. Timed interleaved with the methods it bounds, it sees the same machine load they do.
    """

    def __init__(self, path: Path, *, width: int, height: int) -> None:
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = 1
        self._pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None)
        self._keyframes = keyframe_indices(path)
        self._scaler = VideoReformatter()
        self._size = {"width": width, "height": height}

    def seconds(self, indices: Iterable[int]) -> tuple[float, float]:
        """Wall and CPU seconds of decoding ``indices``' GOPs, seeks excluded."""
        by_gop: dict[int, set[int]] = {}
        for index in indices:
            by_gop.setdefault(gop_of(self._keyframes, index), set()).add(self._pts[index])
        wall = cpu = 0.0
        for key, wanted in sorted(by_gop.items()):
            self._container.seek(self._pts[key], stream=self._stream, backward=True)
            last = max(wanted)
            began, began_cpu = time.perf_counter(), time.process_time()
            for frame in self._container.decode(self._stream):
                if frame.pts in wanted:
                    self._scaler.reformat(frame, format="rgb24", interpolation="BICUBIC", **self._size).to_ndarray()
                if frame.pts is not None and frame.pts >= last:
                    break
            wall += time.perf_counter() - began
            cpu += time.process_time() - began_cpu
        return wall, cpu


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load average: the machine is shared, so every result records how busy it was."""
    return os.getloadavg()


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p95_ms": percentile(seconds, 95) * 1e3,
        "mean_ms": statistics.fmean(seconds) * 1e3 if seconds else float("nan"),
        "n": len(seconds),
    }


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table: numbers right-aligned, floats with 2 decimals (or 1 when large)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, raw in zip(cells, rows, strict=True):
        parts = [
            c.rjust(w) if isinstance(v, int | float) else c.ljust(w) for c, v, w in zip(row, raw, widths, strict=True)
        ]
        lines.append("  ".join(parts))
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the numbers come from, stored next to them."""
    import PIL

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "decord": decord.__version__,
        "pyav": av.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_end": load_average(),
    }


def write_outputs(name: str, payload: dict[str, Any], table: str, out_dir: Path) -> None:
    """Write ``<name>.json`` (numbers + environment) and ``<name>.txt`` (the printed table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    (out_dir / f"{name}.txt").write_text(table + "\n")
    print(f"\nwrote {out_dir / (name + '.json')} and {name}.txt", file=sys.stderr)


def model_or_tiny(model: str | None, work: Path) -> str:
    """The model a benchmark was given, or the tiny random Qwen2.5-VL built (once) under ``work``."""
    if model is not None:
        return model
    from sparse_video_r1.synthetic.tiny_model import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(work / "tiny"))
