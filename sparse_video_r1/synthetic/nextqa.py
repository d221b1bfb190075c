"""A NExT-QA-shaped release from real annotation rows and generated videos.

No NExT-QA video can reach the test and GPU machines, but its annotations can. This lays out a release
exactly as ``dataset/NExT_QA.py`` expects it (``map_vid_vidorID.json``, ``nextqa/<split>.csv``,
``NExTVideo/<dir>/<id>.mp4``), copying real CSV rows and writing an index video
(:func:`~sparse_video_r1.synthetic.videos.write_index_video`) for each of their videos, with the real video's
duration (capped) at a low frame rate so it is quick to write.

CLI::

    python -m sparse_video_r1.synthetic.nextqa --annotations ../shared/nextqa --out ROW_DATA \\
        --split train=val.csv --split val=test.csv --videos 24
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from sparse_video_r1.synthetic.videos import write_index_video

logger = logging.getLogger(__name__)

#: NExT-QA's ``frame_count`` is at the source videos' ~30 fps.
SOURCE_FPS = 30.0


def write_nextqa_like_release(
    annotations: str | Path,
    out: str | Path,
    splits: Mapping[str, str],
    *,
    videos_per_split: int,
    fps: float = 4.0,
    max_seconds: float = 60.0,
    width: int = 64,
    height: int = 48,
) -> dict[str, int]:
    """Write the release under ``out``; ``splits`` maps an output split to a CSV file in ``annotations``.

    Each split takes every question of its CSV's first ``videos_per_split`` distinct videos. Returns the
    number of questions written per split.
    """
    annotations, out = Path(annotations), Path(out)
    video_map: dict[str, str] = json.loads((annotations / "map_vid_vidorID.json").read_text())
    kept_map: dict[str, str] = {}
    written: dict[str, int] = {}
    for split, csv_name in splits.items():
        header, rows = _first_videos(annotations / csv_name, videos_per_split)
        _write_csv(out / "nextqa" / f"{split}.csv", header, rows)
        written[split] = len(rows)
        for row in rows:
            video = row["video"]
            if video in kept_map:
                continue
            if video not in video_map:
                raise KeyError(f"{annotations / csv_name}: video {video} is not in map_vid_vidorID.json")
            kept_map[video] = video_map[video]
            seconds = min(int(row["frame_count"]) / SOURCE_FPS, max_seconds)
            num_frames = max(1, round(seconds * fps))
            path = out / "NExTVideo" / f"{video_map[video]}.mp4"
            write_index_video(path, num_frames=num_frames, fps=fps, width=width, height=height)
    (out / "map_vid_vidorID.json").write_text(json.dumps(kept_map, indent=1))
    logger.info("wrote %d videos and %s questions under %s", len(kept_map), written, out)
    return written


def _first_videos(path: Path, count: int) -> tuple[list[str], list[dict[str, str]]]:
    """Every row (in file order) of the first ``count`` distinct videos; a video's rows are not contiguous."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    chosen = list(dict.fromkeys(row["video"] for row in rows))[:count]
    wanted = set(chosen)
    return header, [row for row in rows if row["video"] in wanted]


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="folder with map_vid_vidorID.json and the CSVs")
    parser.add_argument("--out", required=True, help="where to lay out the release (ROW_DATA)")
    parser.add_argument("--split", action="append", required=True, help="SPLIT=CSV_NAME, e.g. train=val.csv")
    parser.add_argument("--videos", type=int, default=16, help="videos per split")
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=64, help="frame width (NExT-QA's videos are mostly 640)")
    parser.add_argument("--height", type=int, default=48, help="frame height (NExT-QA's: mostly 480)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    splits = dict(item.split("=", 1) for item in args.split)
    write_nextqa_like_release(
        args.annotations,
        args.out,
        splits,
        videos_per_split=args.videos,
        fps=args.fps,
        max_seconds=args.max_seconds,
        width=args.width,
        height=args.height,
    )


if __name__ == "__main__":
    main()
