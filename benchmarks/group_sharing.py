"""Decode work of a GRPO group: n rollouts of one question asking for overlapping frames of one video.

    python benchmarks/group_sharing.py [--groups 12] [--rollouts 8] [--turns 3] [--seed 0]

In GRPO the ``n`` rollouts of a question run in the same agent-loop worker, read the same video and often
ask for the same or nearby moments. Each group here picks a video and, per turn, a few moments of
interest; every rollout asks for 1-8 timestamps, each one of those moments jittered by up to
``--jitter`` seconds. The rollouts of a turn fetch concurrently from a pool of ``--rollouts`` threads (as
the agent loop's decode pool does), through one :class:`FrameSampler` with the decoded-frame cache on
(the default) or off, serving identical requests. Reported per turn of a group:

* frames decoded (the sampler's own count, every frame out of the decoder) against the floor: every GOP
  the whole group touches in that turn decoded once, from its keyframe to the last frame wanted in it;
* GOP passes (seeks) against distinct GOPs touched: the target is at most one pass per GOP per turn;
* wall time of the turn.

The cache is cleared between groups, as a worker moves on to another question.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_RESULTS_DIR,
    DEFAULT_VIDEO_DIR,
    KEYFRAME_INTERVALS,
    VideoSpec,
    ensure_videos,
    floor_work,
    format_table,
    gop_of,
    keyframe_indices,
    load_average,
    write_outputs,
)

from sparse_video_r1.env.config import DecodingConfig
from sparse_video_r1.env.frames import FrameSampler, frame_index

SECONDS = (30, 60, 90)
BUDGET = DecodingConfig()

Turn = list[tuple[float, ...]]  # one request (timestamps) per rollout


def plan_group(duration: float, rollouts: int, turns: int, jitter: float, rng: random.Random) -> list[Turn]:
    """Per turn, 2-4 moments of interest; each rollout asks for 1-8 of them, each jittered by <= ``jitter`` s."""
    plan = []
    for _ in range(turns):
        moments = [rng.uniform(0, duration) for _ in range(rng.randint(2, 4))]
        plan.append(
            [
                tuple(
                    min(duration - 1e-3, max(0.0, rng.choice(moments) + rng.uniform(-jitter, jitter)))
                    for _ in range(rng.randint(1, 8))
                )
                for _ in range(rollouts)
            ]
        )
    return plan


def run_method(
    cache_mb: int, groups: list[tuple[Path, list[Turn]]], rollouts: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Serve every group's turns with one sampler; per turn: frames decoded, seeks, wall seconds."""
    sampler = FrameSampler(
        min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels, frame_cache_bytes=cache_mb * 2**20
    )
    turns = []
    with ThreadPoolExecutor(max_workers=rollouts) as pool:
        for path, plan in groups:
            sampler.info(path)  # open outside the timed turns: both methods open each video once
            for requests in plan:
                before = sampler.stats()
                began = time.perf_counter()
                list(pool.map(lambda timestamps, p=path: sampler.fetch(p, timestamps), requests))
                seconds = time.perf_counter() - began
                after = sampler.stats()
                turns.append(
                    {
                        "frames_decoded": after.frames_decoded - before.frames_decoded,
                        "seeks": after.seeks - before.seeks,
                        "cache_hits": after.cache_hits - before.cache_hits,
                        "seconds": seconds,
                    }
                )
            sampler.close()  # the worker moves on to another question
    totals = {key: sum(turn[key] for turn in turns) for key in ("frames_decoded", "seeks", "cache_hits")}
    stats = sampler.stats()  # each group opens its video once, and builds its pts index then
    totals |= {
        "videos_opened": stats.videos_opened,
        "index_ms_per_minute": 60e3 * stats.index_seconds / stats.indexed_seconds,
    }
    return turns, totals


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=12, help="groups (questions) per keyframe interval")
    parser.add_argument("--rollouts", type=int, default=8, help="GRPO n: rollouts per question")
    parser.add_argument("--turns", type=int, default=3, help="frame-request turns per rollout")
    parser.add_argument("--jitter", type=float, default=1.0, help="seconds around each moment of interest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEO_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    load_before = load_average()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "load_average_before": load_before,
        "settings": vars(args) | {"videos": str(args.videos), "out": str(args.out)},
    }
    rows = []
    for keyint in KEYFRAME_INTERVALS:
        paths = ensure_videos([VideoSpec(s, keyint) for s in SECONDS], args.videos)
        keyframes = {path: keyframe_indices(path) for path in paths}
        probe = FrameSampler(min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels, frame_cache_bytes=0)
        infos = {path: probe.info(path) for path in paths}
        probe.close()
        groups = []
        for _ in range(args.groups):
            path = rng.choice(paths)
            groups.append((path, plan_group(infos[path].duration, args.rollouts, args.turns, args.jitter, rng)))
        floors, gops = [], []
        for path, plan in groups:
            for requests in plan:
                union = {frame_index(infos[path], t) for timestamps in requests for t in timestamps}
                floors.append(floor_work(keyframes[path], union))
                gops.append(len({gop_of(keyframes[path], index) for index in union}))
        # Alternate which method goes first, so warm-up and drift do not favour one.
        order = [("shared cache", 256), ("no cache", 0)]
        measured = {}
        for name, cache_mb in order if keyint % 2 == 0 else order[::-1]:
            measured[name] = run_method(cache_mb, groups, args.rollouts)
        entry: dict[str, Any] = {"floor_frames": sum(floors), "gops_touched": sum(gops), "turns": len(floors)}
        for name, cache_mb in order:
            turns, totals = measured[name]
            over = sum(1 for turn, gop in zip(turns, gops, strict=True) if turn["seeks"] > gop)
            seconds = sum(turn["seconds"] for turn in turns)
            entry[name] = {
                "frame_cache_mb": cache_mb,
                **totals,
                "seconds": seconds,
                "decoded_over_floor": totals["frames_decoded"] / sum(floors),
                "seeks_over_gops": totals["seeks"] / sum(gops),
                "turns_with_a_gop_decoded_twice": over,
                "per_turn": turns,
            }
            rows.append(
                [
                    f"k={keyint}",
                    name,
                    len(turns),
                    totals["frames_decoded"],
                    sum(floors),
                    totals["frames_decoded"] / sum(floors),
                    totals["seeks"],
                    sum(gops),
                    over,
                    seconds,
                ]
            )
        entry["speedup_wall"] = entry["no cache"]["seconds"] / entry["shared cache"]["seconds"]
        entry["decode_work_ratio"] = entry["no cache"]["frames_decoded"] / entry["shared cache"]["frames_decoded"]
        results[f"keyint_{keyint}"] = entry
    table = (
        f"group of {args.rollouts} rollouts x {args.turns} turns, {args.groups} groups per keyint "
        f"(load average before: {load_before[0]:.2f})\n"
        + format_table(
            [
                "keyint",
                "method",
                "turns",
                "decoded",
                "floor",
                "x floor",
                "GOP passes",
                "GOPs",
                "turns >1 pass/GOP",
                "wall s",
            ],
            rows,
        )
    )
    for keyint in KEYFRAME_INTERVALS:
        entry = results[f"keyint_{keyint}"]
        shared = entry["shared cache"]
        table += (
            f"\nk={keyint}: the shared cache decodes {entry['decode_work_ratio']:.2f}x fewer frames and is "
            f"{entry['speedup_wall']:.2f}x faster in wall time; {shared['videos_opened']} videos opened for "
            f"{args.groups} groups (pts index: {shared['index_ms_per_minute']:.1f} ms per minute of video)"
        )
    print(table)
    write_outputs("group_sharing", results, table, args.out)


if __name__ == "__main__":
    main()
