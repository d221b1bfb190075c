"""Reading the NExT-QA multiple-choice release (https://github.com/doc-doc/NExT-QA) into records.

The release unzips to ``map_vid_vidorID.json`` (video id -> ``"dir/id"``), ``nextqa/{train,val}.csv``,
``test-data-nextqa/test.csv`` and ``NExTVideo/<dir>/<id>.mp4``; copies that keep the map and every CSV in
``nextqa/`` are accepted too. Each CSV row is one question; a video has several.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sparse_video_r1.data.records import BadRows, Reason, RowProblem, SplitRecords, VideoQARecord

logger = logging.getLogger(__name__)

#: Question type code -> the group NExT-QA reports accuracy by.
QUESTION_GROUPS = {
    "CW": "Causal",
    "CH": "Causal",
    "TN": "Temporal",
    "TC": "Temporal",
    "TP": "Temporal",
    "DL": "Descriptive",
    "DC": "Descriptive",
    "DO": "Descriptive",
}
#: The groups in the order reports list them; types of other datasets fall under :data:`OTHER_GROUP`.
GROUP_ORDER = ("Causal", "Temporal", "Descriptive")
OTHER_GROUP = "Other"

SOURCE = "nextqa"
SPLITS = ("train", "val", "test")
MAP_NAME = "map_vid_vidorID.json"
VIDEO_DIR = "NExTVideo"
OPTION_COLUMNS = ("a0", "a1", "a2", "a3", "a4")
REQUIRED_COLUMNS = ("video", "question", "answer", "qid", "type", *OPTION_COLUMNS)


def question_group(question_type: str | None) -> str:
    """NExT-QA's reporting group of a type code; types of other datasets fall under ``Other``."""
    return QUESTION_GROUPS.get(question_type or "", OTHER_GROUP)


_ANSWER = re.compile(r"[0-4]")


def map_candidates(root: Path) -> list[Path]:
    """Where the video map may be, in order of preference."""
    return [root / MAP_NAME, root / "nextqa" / MAP_NAME]


def csv_candidates(root: Path, split: str) -> list[Path]:
    """Where a split's CSV may be: the README's layout first, then everything under ``nextqa/``."""
    if split == "test":
        return [root / "test-data-nextqa" / "test.csv", root / "nextqa" / "test.csv"]
    return [root / "nextqa" / f"{split}.csv"]


def _first_existing(candidates: Sequence[Path], what: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{what} not found; tried:\n  {tried}")


def locate_map(root: Path) -> Path:
    return _first_existing(map_candidates(root), f"NExT-QA video map {MAP_NAME}")


def locate_split_csv(root: Path, split: str) -> Path:
    return _first_existing(csv_candidates(root, split), f"NExT-QA {split} split CSV")


def load_video_map(path: Path) -> dict[str, str]:
    """Video id -> ``"dir/id"`` (the mp4's path under ``NExTVideo`` without extension)."""
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: expected a JSON object of video id -> 'dir/id' strings")
    return data


def video_file(root: Path, mapped: str) -> Path:
    return root / VIDEO_DIR / f"{mapped}.mp4"


def read_nextqa_split(root: Path, split: str, *, skip_bad_rows: bool = False) -> SplitRecords:
    """All questions of one split, with absolute video paths; bad rows raise or are counted (``skip_bad_rows``).

    Whether each video file exists is left to :func:`sparse_video_r1.data.preprocess.preprocess_split`,
    which reports missing ones instead of dropping them silently.
    """
    root = Path(root).expanduser().resolve()
    video_map = load_video_map(locate_map(root))
    path = locate_split_csv(root, split)
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is reported with its line
    # number instead of aborting the whole read (and csv's line count stays exact).
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = _numbered_rows(f, path)
        first = next(rows, None)
        columns = _read_header(first[1] if first else None, path)
        parsers = (
            (line, functools.partial(_parse_row, fields, columns, root, video_map, split)) for line, fields in rows
        )
        return SplitRecords.collect(
            split,
            BadRows(path, skip_bad_rows),
            parsers,
            lambda record: f"video {record.video_id} already has this qid",
        )


def _read_header(header: list[str] | None, path: Path) -> dict[str, int]:
    """Column name -> position; a broken header is a broken file, never skippable."""
    if header is None:
        raise ValueError(f"{path}: empty file, expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
    columns = {name.strip(): i for i, name in enumerate(header)}
    if len(columns) != len(header):
        raise ValueError(f"{path}:1: header repeats a column name: {header}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}:1: header lacks required columns {missing}; found {list(columns)}")
    return columns


def _numbered_rows(f: TextIO, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row, header included; a CSV the tokenizer cannot split is a
    file error, as there is no row boundary to resume from."""
    reader = csv.reader(f)
    try:
        for fields in reader:
            if fields:
                yield reader.line_num, fields
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: unreadable CSV: {e}") from e


def _parse_row(
    fields: list[str], columns: Mapping[str, int], root: Path, video_map: Mapping[str, str], split: str
) -> VideoQARecord:
    if not _is_utf8("".join(fields)):
        raise RowProblem(Reason.BAD_UTF8, "row contains bytes that are not valid UTF-8")
    if len(fields) != len(columns):
        reason = Reason.MISSING_FIELD if len(fields) < len(columns) else Reason.BAD_FIELD_COUNT
        raise RowProblem(reason, f"row has {len(fields)} fields, header has {len(columns)}")
    row = {name: fields[i].strip() for name, i in columns.items()}
    empty = [c for c in REQUIRED_COLUMNS if not row[c]]
    if empty:
        raise RowProblem(Reason.MISSING_FIELD, f"empty {', '.join(empty)}")
    if not _ANSWER.fullmatch(row["answer"]):
        raise RowProblem(Reason.BAD_ANSWER, f"answer {row['answer']!r} is not an option index 0..4")
    if row["type"] not in QUESTION_GROUPS:
        raise RowProblem(Reason.BAD_TYPE, f"type {row['type']!r} is not one of {sorted(QUESTION_GROUPS)}")
    video_id = row["video"]
    if video_id not in video_map:
        raise RowProblem(Reason.UNMAPPED_VIDEO, f"video {video_id} is not in {MAP_NAME}")
    return VideoQARecord(
        qid=f"{video_id}_{row['qid']}",
        video_id=video_id,
        video_path=str(video_file(root, video_map[video_id])),
        question=row["question"],
        options=tuple(row[c] for c in OPTION_COLUMNS),
        answer_index=int(row["answer"]),
        question_type=row["type"],
        source=SOURCE,
        split=split,
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
