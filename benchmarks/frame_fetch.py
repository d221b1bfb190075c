"""Per-request latency of fetching 1-8 frames by timestamp: our sampler against naive baselines and the floor.

    python benchmarks/frame_fetch.py [--requests 150] [--sequential-requests 40] [--seed 0]

Videos are NExT-QA-shaped (640x480, 30 fps, 30/60/90 s, H.264) with keyframes every 250 frames (x264's
default keyint) and every 30, written once under ``.cache/benchmarks/videos``. Each request asks for 1-8
uniformly random timestamps of a random video; every method serves the same requests, interleaved, so
machine noise hits all of them alike:

* ``sampler``: :class:`FrameSampler` as the agent loop uses it (PyAV readers kept open, frames scaled to
  the pixel budget), with the decoded-frame cache off: these requests measure the decode path;
* ``decord_open``: the sampler as it was before (a decord reader kept open per video, one sorted
  ``get_batch``, PIL resize);
* ``reopen``: a fresh decord reader per request, otherwise as ``decord_open``;
* ``sequential``: a fresh reader per request reading every frame from the start up to the last one asked for;
* ``floor``: each GOP the request touches decoded once from its keyframe, in order, plus converting each
  returned frame to RGB at the budget size: timed in the same rotation (seeks untimed), so it sees the
  same load. The JSON also has ``floor_from_rates``: the same work at the best-of-3 sequential decode and
  conversion rates measured at the start (the issue's definition; optimistic on a loaded machine).

It then measures peak RSS of a process that fetches from many videos, to show the reader cache bounds memory,
and what building a video's pts index costs when it is opened (once per video), per minute of video: the
packet scan of each mp4, and of H.264 AVI copies of the 30 s videos, whose display order takes a decode.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import numpy as np
from common import (
    DEFAULT_RESULTS_DIR,
    DEFAULT_VIDEO_DIR,
    HEIGHT,
    KEYFRAME_INTERVALS,
    WIDTH,
    DecodeRates,
    FloorDecoder,
    VideoSpec,
    ensure_videos,
    floor_work,
    format_table,
    keyframe_indices,
    load_average,
    measure_decode_rates,
    summary_ms,
    write_outputs,
)
from PIL import Image
from qwen_vl_utils import smart_resize

from sparse_video_r1.env.config import IMAGE_FACTOR, DecodingConfig
from sparse_video_r1.env.frames import FrameSampler, VideoInfo, frame_index, resize_to_budget
from sparse_video_r1.synthetic.videos import write_index_video

SECONDS = (30, 60, 90)
BUDGET = DecodingConfig()  # the training defaults: 16-128 visual tokens per frame
#: The size frames come out at under that budget (height, width).
OUT_HEIGHT, OUT_WIDTH = smart_resize(
    HEIGHT, WIDTH, factor=IMAGE_FACTOR, min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels
)
METHODS = ("sampler", "decord_open", "reopen", "sequential", "floor")


@dataclass(frozen=True)
class Request:
    video: Path
    timestamps: tuple[float, ...]


def make_requests(videos: dict[Path, VideoInfo], count: int, rng: random.Random) -> list[Request]:
    paths = sorted(videos)
    requests = []
    for _ in range(count):
        path = rng.choice(paths)
        n = rng.randint(1, 8)
        requests.append(Request(path, tuple(rng.uniform(0, videos[path].duration) for _ in range(n))))
    return requests


def indices_of(info: VideoInfo, timestamps: Sequence[float]) -> list[int]:
    return sorted({frame_index(info, t) for t in timestamps})


def open_reader(path: Path) -> tuple[Any, VideoInfo]:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    fps = float(reader.get_avg_fps())
    return reader, VideoInfo(path=str(path), num_frames=len(reader), fps=fps, duration=len(reader) / fps)


def resized(pixels: Any) -> Image.Image:
    return resize_to_budget(Image.fromarray(pixels), min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels)


def fetch_reopen(request: Request) -> list[Image.Image]:
    """The naive way: open the file for every request."""
    reader, info = open_reader(request.video)
    return [resized(frame) for frame in reader.get_batch(indices_of(info, request.timestamps)).asnumpy()]


def fetch_sequential(request: Request) -> list[Image.Image]:
    """Naiver still: read every frame in order from the start until the last one asked for."""
    reader, info = open_reader(request.video)
    wanted = indices_of(info, request.timestamps)
    kept = []
    for index in range(wanted[-1] + 1):
        frame = reader.next()
        if index in wanted:
            kept.append(resized(frame.asnumpy()))
    return kept


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``; CPU time (all threads of this process) is what the ratios use,
    because on a shared machine other processes stretch wall time but not the work done here."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def fetch_decord_open(readers: dict[Path, tuple[Any, VideoInfo]], request: Request) -> list[Image.Image]:
    """The sampler before this work: a decord reader kept open per video, one sorted ``get_batch``, PIL resize."""
    reader, info = readers[request.video]
    return [resized(frame) for frame in reader.get_batch(indices_of(info, request.timestamps)).asnumpy()]


def run_latency(
    videos: dict[Path, VideoInfo], rates: dict[Path, DecodeRates], requests: int, sequential: int, seed: int
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Every method serves the same requests, in rotating order so drift on a shared machine hits all alike."""
    rng = random.Random(seed)
    by_keyint: dict[int, dict[Path, VideoInfo]] = {}
    for path, info in videos.items():
        by_keyint.setdefault(keyint_of(path), {})[path] = info
    results: dict[str, Any] = {}
    rows = []
    for keyint, group in sorted(by_keyint.items(), reverse=True):
        # The frame cache is off: these requests are independent, so they measure the decode path itself.
        sampler = FrameSampler(
            min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels, max_open_videos=len(group), frame_cache_bytes=0
        )
        opening = [timed(functools.partial(sampler.info, path))[0] for path in group]
        readers = {path: open_reader(path) for path in group}
        keyframes = {path: keyframe_indices(path) for path in group}
        wall: dict[str, list[float]] = {name: [] for name in METHODS}
        cpu: dict[str, list[float]] = {name: [] for name in METHODS}
        paired: dict[str, list[float]] = {name: [] for name in METHODS if name != "floor"}
        floors = {path: FloorDecoder(path, width=OUT_WIDTH, height=OUT_HEIGHT) for path in group}
        floor_decoded, floor_from_rates = 0, 0.0
        plan = make_requests(group, requests, rng)
        for number, request in enumerate(plan):
            wanted = indices_of(group[request.video], request.timestamps)
            work = floor_work(keyframes[request.video], wanted)
            floor_decoded += work
            floor_from_rates += rates[request.video].floor_seconds(work, len(wanted))
            fetch = functools.partial(sampler.fetch, request.video, request.timestamps)
            methods: list[tuple[str, Callable[[], tuple[float, float]]]] = [
                ("floor", functools.partial(floors[request.video].seconds, wanted)),  # times itself, seeks excluded
                ("sampler", functools.partial(timed, fetch)),
                ("decord_open", functools.partial(timed, functools.partial(fetch_decord_open, readers, request))),
                ("reopen", functools.partial(timed, functools.partial(fetch_reopen, request))),
            ]
            if number < sequential:
                methods.append(("sequential", functools.partial(timed, functools.partial(fetch_sequential, request))))
            measured = {name: fn() for name, fn in methods[number % len(methods) :] + methods[: number % len(methods)]}
            for name, (wall_s, cpu_s) in measured.items():
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
                if name != "floor":
                    paired[name].append(cpu_s / measured["floor"][1])
        stats = sampler.stats()
        sampler.close()
        entry: dict[str, Any] = {
            "videos": [str(p.name) for p in group],
            "sampler_open_ms_mean": 1e3 * sum(opening) / len(opening),
            "pts_index_ms_per_minute": 60e3 * stats.index_seconds / stats.indexed_seconds,
            "decode_rates": {p.name: vars(rates[p]) for p in group},
            "frames_decoded_per_request": {
                "sampler": stats.frames_decoded / len(plan),
                "floor": floor_decoded / len(plan),
            },
            "sampler_seeks_per_request": stats.seeks / len(plan),
            # The floor: the same work at the best-of-3 rates measured at the start (optimistic under load).
            "floor_from_rates_cpu_s": floor_from_rates,
        }
        for name in METHODS:
            summary = summary_ms(wall[name])
            summary["cpu_mean_ms"] = 1e3 * sum(cpu[name]) / len(cpu[name])
            summary["cpu_total_over_floor"] = sum(cpu[name]) / sum(cpu["floor"][: len(cpu[name])])
            summary["cpu_median_ratio_to_floor"] = float(np.median(paired[name])) if name != "floor" else 1.0
            entry[name] = summary
            rows.append(
                [
                    f"k={keyint}",
                    name,
                    summary["n"],
                    summary["p50_ms"],
                    summary["p95_ms"],
                    summary["cpu_mean_ms"],
                    summary["cpu_total_over_floor"],
                    summary["cpu_median_ratio_to_floor"],
                ]
            )
        entry["sampler"]["cpu_total_over_floor_from_rates"] = sum(cpu["sampler"]) / floor_from_rates
        entry["floor_cpu_total_s"] = sum(cpu["floor"])
        results[f"keyint_{keyint}"] = entry
    return results, rows


def run_index(paths: Sequence[Path], repeats: int = 3) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Seconds to open each video (the pts index is built then, once per video), best of ``repeats``."""
    results, rows = [], []
    for path in paths:
        best = math.inf
        for _ in range(repeats):
            sampler = FrameSampler(min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels, frame_cache_bytes=0)
            sampler.info(path)
            stats = sampler.stats()
            sampler.close()
            best = min(best, stats.index_seconds)
        minutes = stats.indexed_seconds / 60
        results.append(
            {"video": path.name, "index_s": best, "video_minutes": minutes, "ms_per_minute": 1e3 * best / minutes}
        )
        rows.append([path.name, 60 * minutes, 1e3 * best, 1e3 * best / minutes])
    return results, rows


def ensure_avi(path: Path, folder: Path) -> Path:
    """An H.264 AVI with the same pictures, keyframe interval and B-frames as a benchmark mp4, written once."""
    out = folder / path.with_suffix(".avi").name
    if not out.exists():
        info = open_reader(path)[1]
        partial = out.with_suffix(".partial.avi")
        write_index_video(
            partial,
            num_frames=info.num_frames,
            fps=info.fps,
            width=WIDTH,
            height=HEIGHT,
            keyframe_interval=keyint_of(path),
        )
        partial.rename(out)
    return out


def keyint_of(path: Path) -> int:
    return int(path.name.split("_k")[1].split("_")[0])


def _status_mb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status`` (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_child(spec: dict[str, Any]) -> None:
    """In a fresh process: fetch 4 frames from each of many videos through one sampler; print peak RSS.

    The imports (torch among them) peak far above their resting RSS, so the high-water mark is reset
    (``/proc/self/clear_refs``) before fetching: the peak then shows what the readers and frames add.
    """
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mb("VmRSS")
    sampler = FrameSampler(
        min_pixels=BUDGET.min_pixels,
        max_pixels=BUDGET.max_pixels,
        max_open_videos=spec["max_open_videos"],
        frame_cache_bytes=spec["frame_cache_mb"] * 2**20,
    )
    for path in spec["paths"]:
        duration = sampler.info(path).duration
        sampler.fetch(path, [duration * (i + 0.5) / 4 for i in range(4)])
    print(
        json.dumps(
            {
                "baseline_mb": baseline,
                "peak_mb": _status_mb("VmHWM"),
                "open": len(sampler.open_paths),
                "cached_frames_mb": sampler.cached_frames[1] / 2**20,
            }
        )
    )


def run_rss(videos: Sequence[Path], count: int) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Peak RSS over ``count`` distinct paths (symlinks to the cached videos) for several reader-cache sizes."""
    results, rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for number in range(count):
            link = Path(folder) / f"video_{number:03d}.mp4"
            link.symlink_to(videos[number % len(videos)].resolve())
            paths.append(str(link))
        for max_open, cache_mb in ((1, 0), (16, 0), (16, 256), (count, 0)):
            spec = {"paths": paths, "max_open_videos": max_open, "frame_cache_mb": cache_mb}
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", json.dumps(spec)],
                check=True,
                capture_output=True,
                text=True,
                cwd=os.path.dirname(__file__),
            )
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            growth = measured["peak_mb"] - measured["baseline_mb"]
            results.append(
                {
                    "videos": count,
                    "max_open_videos": max_open,
                    "frame_cache_mb": cache_mb,
                    **measured,
                    "growth_mb": growth,
                }
            )
            rows.append([count, max_open, cache_mb, measured["baseline_mb"], measured["peak_mb"], growth])
    return results, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=150, help="requests per keyframe interval")
    parser.add_argument("--sequential-requests", type=int, default=40, help="how many of them the slow baseline gets")
    parser.add_argument("--rss-videos", type=int, default=64, help="distinct videos for the peak-RSS runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEO_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(json.loads(args.rss_child))
        return
    paths = ensure_videos([VideoSpec(s, k) for k in KEYFRAME_INTERVALS for s in SECONDS], args.videos)
    videos = {path: open_reader(path)[1] for path in paths}
    load_before = load_average()
    rates = {path: measure_decode_rates(path, width=OUT_WIDTH, height=OUT_HEIGHT) for path in paths}
    latency, latency_rows = run_latency(videos, rates, args.requests, args.sequential_requests, args.seed)
    rss, rss_rows = run_rss(paths, args.rss_videos)
    index, index_rows = run_index(
        [*paths, *(ensure_avi(p, args.videos) for p in paths if p.name.startswith("index_30s"))]
    )
    rate_rows = [[p.name, r.decode_fps, r.convert_ms, r.decord_sequential_fps] for p, r in rates.items()]
    table = "\n\n".join(
        [
            f"decoding on this machine (measured in this run; load average before: {load_before[0]:.2f})\n"
            + format_table(
                ["video", "PyAV decode fps", f"to RGB {OUT_WIDTH}x{OUT_HEIGHT} ms", "decord sequential RGB fps"],
                rate_rows,
            ),
            "per-request latency, 1-8 random timestamps: wall p50/p95; CPU ms per request and its ratio to the floor\n"
            "(total over total, and the median of per-request ratios)\n"
            + format_table(
                ["keyint", "method", "n", "p50 ms", "p95 ms", "CPU ms", "x floor", "median x floor"], latency_rows
            ),
            "peak RSS fetching 4 frames from each video, measured from after the imports (MB)\n"
            + format_table(
                ["videos", "max_open_videos", "frame_cache_mb", "after imports", "peak", "growth"], rss_rows
            ),
            "building the pts index when a video is opened (once per video; best of 3)\n"
            + format_table(["video", "seconds of video", "index ms", "ms per minute of video"], index_rows),
        ]
    )
    print(table)
    payload = {"load_average_before": load_before, "latency": latency, "rss": rss, "pts_index": index}
    write_outputs("frame_fetch", payload, table, args.out)


if __name__ == "__main__":
    main()
