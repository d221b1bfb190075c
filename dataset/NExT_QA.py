"""Turn NExT-QA (or your own JSONL of video questions) into the parquet files verl trains on.

    python dataset/NExT_QA.py --raw ROW_DATA --out DATA_DIR [--splits train val test] [--skip-bad-rows]
                              [--check-videos [--check-workers N]] [--limit N]
    python dataset/NExT_QA.py --jsonl FILE --split NAME --out DATA_DIR [--skip-bad-rows] [--check-videos] [--limit N]

Writes ``DATA_DIR/<split>.parquet`` and prints a per-split summary. Rows whose video file is missing are
left out and reported; with ``--check-videos`` every video is also decoded at its first, middle and last
frame, and rows whose video cannot be read are left out and reported with the reason. Runs from any
directory whether or not ``pip install -e .`` was done: when the package is not importable, this checkout
is put on ``sys.path``. All logic lives in :mod:`sparse_video_r1.data`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    from sparse_video_r1 import data
except ModuleNotFoundError as e:
    if e.name != "sparse_video_r1":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sparse_video_r1 import data

SPLITS = data.nextqa.SPLITS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw", type=Path, help="NExT-QA root: map_vid_vidorID.json, nextqa/, NExTVideo/")
    source.add_argument("--jsonl", type=Path, help="generic format: one JSON question per line")
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>.parquet")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, help=f"NExT-QA splits (default: {' '.join(SPLITS)})")
    parser.add_argument("--split", help="split name of the --jsonl file (names its parquet)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="count malformed rows instead of failing")
    parser.add_argument(
        "--check-videos", action="store_true", help="decode 3 frames of every video; leave out unreadable ones"
    )
    parser.add_argument("--check-workers", type=int, default=4, help="videos probed at a time (default: 4)")
    parser.add_argument("--limit", type=int, help="write at most N rows per split (for quick runs)")
    args = parser.parse_args(argv)
    if args.jsonl is not None and not args.split:
        parser.error("--jsonl needs --split NAME")
    if args.split and (Path(args.split).name != args.split or args.split in {".", ".."}):
        parser.error("--split must be a plain name (it names <split>.parquet)")
    if args.jsonl is not None and args.splits:
        parser.error("--splits is for --raw; use --split NAME with --jsonl")
    if args.raw is not None and args.split:
        parser.error("--split is for --jsonl; use --splits with --raw")
    if args.check_workers < 1:
        parser.error("--check-workers must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    return args


def read_all(args: argparse.Namespace) -> list[data.SplitRecords]:
    """Every requested split, read (and validated) before anything is written."""
    if args.jsonl is not None:
        return [data.read_jsonl(args.jsonl, args.split, skip_bad_rows=args.skip_bad_rows)]
    return [
        data.read_nextqa_split(args.raw, split, skip_bad_rows=args.skip_bad_rows) for split in args.splits or SPLITS
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        reports = [
            data.preprocess_split(
                parsed, args.out, limit=args.limit, check=args.check_videos, check_workers=args.check_workers
            )
            for parsed in read_all(args)
        ]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(data.format_report(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
