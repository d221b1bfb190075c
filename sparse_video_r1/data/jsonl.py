"""The generic input format, for users' own video multiple-choice data: one JSON object per line.

``{"video": path, "question": str, "options": [2..5 str], "answer": index or letter, "id": str?, "type": str?}``;
a relative ``video`` is relative to the JSONL's folder, so a dataset folder can be moved as a whole.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

from sparse_video_r1.data.records import (
    LETTERS,
    MIN_OPTIONS,
    BadRows,
    Reason,
    RowProblem,
    SplitRecords,
    VideoQARecord,
)

logger = logging.getLogger(__name__)


def read_jsonl(path: Path, split: str, *, skip_bad_rows: bool = False, source: str | None = None) -> SplitRecords:
    """All questions of a JSONL file; ``source`` (the rows' ``data_source``) defaults to the file's stem.

    Blank lines are ignored; bad rows raise or are counted (``skip_bad_rows``), as for NExT-QA.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    source = source or path.stem
    with path.open("rb") as f:
        rows = (
            (line_no, functools.partial(_parse_line, raw, line_no, path.parent, source, split))
            for line_no, raw in enumerate(f, start=1)
            if raw.strip()
        )
        return SplitRecords.collect(
            split, BadRows(path, skip_bad_rows), rows, lambda record: f"id {record.qid!r} already used"
        )


def _parse_line(raw: bytes, line_no: int, base: Path, source: str, split: str) -> VideoQARecord:
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise RowProblem(Reason.BAD_UTF8, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowProblem(Reason.BAD_JSON, e.msg) from None
    if not isinstance(obj, dict):
        raise RowProblem(Reason.BAD_JSON, f"expected a JSON object, got {type(obj).__name__}")
    video = _required_text(obj, "video")
    options = _options(obj)
    video_id = Path(video).stem
    qid = _optional_text(obj, "id") or f"{video_id}_{line_no}"
    return VideoQARecord(
        qid=qid,
        video_id=video_id,
        video_path=os.path.normpath(base / Path(video).expanduser()),
        question=_required_text(obj, "question"),
        options=options,
        answer_index=_answer_index(obj, len(options)),
        question_type=_optional_text(obj, "type"),
        source=source,
        split=split,
    )


def _required_text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(Reason.MISSING_FIELD, f"missing or empty {key!r}")
    if not isinstance(value, str):
        raise RowProblem(Reason.BAD_FIELD, f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _optional_text(obj: dict[str, Any], key: str) -> str | None:
    """A string, or an int id written without quotes; absent, null or empty means not given."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowProblem(Reason.BAD_FIELD, f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _options(obj: dict[str, Any]) -> tuple[str, ...]:
    options = obj.get("options")
    if options is None:
        raise RowProblem(Reason.MISSING_FIELD, "missing 'options'")
    if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= len(LETTERS):
        raise RowProblem(Reason.BAD_OPTIONS, f"'options' must be a list of {MIN_OPTIONS}..{len(LETTERS)} strings")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise RowProblem(Reason.BAD_OPTIONS, "every option must be a non-empty string")
    return tuple(o.strip() for o in options)


def _answer_index(obj: dict[str, Any], num_options: int) -> int:
    """An int index or a letter (either case) naming one of the options."""
    answer = obj.get("answer")
    if answer is None:
        raise RowProblem(Reason.MISSING_FIELD, "missing 'answer'")
    letters = LETTERS[:num_options]
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in letters:
        return letters.index(answer.strip().upper())
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < num_options:
        return answer
    raise RowProblem(
        Reason.BAD_ANSWER,
        f"answer {answer!r} is not an index 0..{num_options - 1} or a letter {letters[0]}..{letters[-1]}",
    )
