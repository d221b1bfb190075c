"""One video multiple-choice question, whatever file it came from, and the verl row it becomes.

Every reader (NExT-QA CSVs, the generic JSONL) produces :class:`VideoQARecord`; only :func:`to_verl_row`
knows verl's dataset schema, so the agent loop, the reward and evaluation all read the same fields.
"""

from __future__ import annotations

import enum
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sparse_video_r1.env.config import AGENT_NAME
from sparse_video_r1.env.protocol import question_text

#: Answer letters by option index; at most five options, as in NExT-QA.
LETTERS = "ABCDE"
MIN_OPTIONS = 2
ABILITY = "video_qa"

logger = logging.getLogger(__name__)

_STR = pa.string()
#: Fixed so every split and source writes the same schema: verl concatenates parquet files, and a column
#: inferred as ``null`` in one file (e.g. question_type with no types) would not concatenate with ``string``.
ROW_SCHEMA = pa.schema(
    [
        ("data_source", _STR),
        ("agent_name", _STR),
        ("prompt", pa.list_(pa.struct([("role", _STR), ("content", _STR)]))),
        ("ability", _STR),
        ("reward_model", pa.struct([("style", _STR), ("ground_truth", _STR)])),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("split", _STR),
                    ("qid", _STR),
                    ("video_id", _STR),
                    ("video_path", _STR),
                    ("question", _STR),
                    ("options", pa.list_(_STR)),
                    ("answer", _STR),
                    ("question_type", _STR),
                ]
            ),
        ),
    ]
)
_EXTRA_INFO: pa.StructType = ROW_SCHEMA.field("extra_info").type


@dataclass(frozen=True)
class VideoQARecord:
    """A validated question: ``qid`` is unique within its split and ``options[answer_index]`` is the answer."""

    qid: str
    video_id: str
    video_path: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    question_type: str | None
    source: str
    split: str
    #: Task-specific numbers the reward or analysis needs (e.g. when the answer is visible), written as
    #: float64 fields of ``extra_info`` next to the standard ones.
    extras: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clashes = sorted(set(self.extras) & set(_EXTRA_INFO.names))
        if clashes:
            raise ValueError(f"{self.qid}: extras {clashes} would overwrite standard extra_info fields")
        if not MIN_OPTIONS <= len(self.options) <= len(LETTERS):
            raise ValueError(f"{self.qid}: need {MIN_OPTIONS}..{len(LETTERS)} options, got {len(self.options)}")
        if not 0 <= self.answer_index < len(self.options):
            raise ValueError(f"{self.qid}: answer_index {self.answer_index} outside 0..{len(self.options) - 1}")
        if not os.path.isabs(self.video_path):
            raise ValueError(f"{self.qid}: video_path must be absolute, got {self.video_path!r}")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]


class Reason(str, enum.Enum):
    """Why an input row was rejected; skipped rows are counted under these names."""

    BAD_UTF8 = "bad_utf8"
    BAD_JSON = "bad_json"
    BAD_FIELD_COUNT = "bad_field_count"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BAD_OPTIONS = "bad_options"
    BAD_ANSWER = "bad_answer"
    BAD_TYPE = "bad_type"
    UNMAPPED_VIDEO = "unmapped_video"
    DUPLICATE_QID = "duplicate_qid"


class RowProblem(Exception):
    """Raised by a row parser, which knows what is wrong but not where; :class:`BadRows` adds the where."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


class BadRowError(ValueError):
    """A malformed input row; the message starts with ``file:line`` so users can find and fix it."""

    def __init__(self, path: Path, line: int, problem: RowProblem) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.reason = problem.reason


@dataclass
class BadRows:
    """Raise on the first bad row, or (``skip=True``) count bad rows by reason and go on."""

    path: Path
    skip: bool
    counts: Counter[str] = field(default_factory=Counter)

    def report(self, line: int, problem: RowProblem) -> None:
        error = BadRowError(self.path, line, problem)
        if not self.skip:
            raise error from problem
        logger.debug("skipping %s", error)
        self.counts[problem.reason.value] += 1


@dataclass(frozen=True)
class SplitRecords:
    """What a reader got from one input file: the good records plus what it had to skip."""

    split: str
    path: Path
    records: list[VideoQARecord]
    rows_read: int
    skipped: dict[str, int]

    @classmethod
    def collect(
        cls,
        split: str,
        bad: BadRows,
        rows: Iterable[tuple[int, Callable[[], VideoQARecord]]],
        repeated: Callable[[VideoQARecord], str],
    ) -> SplitRecords:
        """Parse ``rows`` (line number, parser) of ``bad.path``; a bad row or a repeated qid (``repeated`` says
        what was repeated) is reported to ``bad``."""
        records: list[VideoQARecord] = []
        seen: set[str] = set()
        rows_read = 0
        for line, parse in rows:
            rows_read += 1
            try:
                record = parse()
                if record.qid in seen:
                    raise RowProblem(Reason.DUPLICATE_QID, repeated(record))
            except RowProblem as problem:
                bad.report(line, problem)
                continue
            seen.add(record.qid)
            records.append(record)
        logger.info("%s: %d rows read, %d valid, skipped %s", bad.path, rows_read, len(records), dict(bad.counts))
        return cls(split, bad.path, records, rows_read, dict(bad.counts))


def to_verl_row(record: VideoQARecord, index: int) -> dict[str, Any]:
    """The row verl's RLHFDataset reads; ``extra_info`` carries everything our agent loop needs to rebuild
    the multimodal dialogue (``prompt`` is only the text question, for length filtering and logging)."""
    letter = record.answer_letter
    return {
        "data_source": record.source,
        "agent_name": AGENT_NAME,
        "prompt": [{"role": "user", "content": question_text(record.question, record.options)}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": letter},
        "extra_info": {
            "index": index,
            "split": record.split,
            "qid": record.qid,
            "video_id": record.video_id,
            "video_path": record.video_path,
            "question": record.question,
            "options": list(record.options),
            "answer": letter,
            "question_type": record.question_type,
            **record.extras,
        },
    }


def _row_schema(extras: Sequence[str] = ()) -> pa.Schema:
    """:data:`ROW_SCHEMA` with a float64 ``extra_info`` field for each name in ``extras`` (a record's extras)."""
    if not extras:
        return ROW_SCHEMA
    fields = [*_EXTRA_INFO, *(pa.field(name, pa.float64()) for name in extras)]
    index = ROW_SCHEMA.get_field_index("extra_info")
    return ROW_SCHEMA.set(index, pa.field("extra_info", pa.struct(fields)))


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows atomically, so an interrupted run never leaves a half file.

    The schema is :data:`ROW_SCHEMA` plus the first row's extras (:func:`_row_schema`), so every split of a
    dataset gets the same one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    extras = [name for name in rows[0]["extra_info"] if name not in _EXTRA_INFO.names] if rows else []
    table = pa.Table.from_pylist(rows, schema=_row_schema(extras))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
