"""From records to ``<split>.parquet``, with an account of every row that did not make it.

Shared by every input format, so missing videos are handled (and reported) the same way everywhere: rows
whose video file is absent are excluded from the parquet, never silently, and a split left with no usable
row is an error rather than an empty file that would fail later inside a training job. With
``check_videos`` every present video is also probed (:mod:`sparse_video_r1.data.video_check`) and rows whose
video cannot be served are left out and reported by reason, like missing ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sparse_video_r1.data.records import SplitRecords, VideoQARecord, to_verl_row, write_parquet
from sparse_video_r1.data.video_check import VideoProblem, check_videos

logger = logging.getLogger(__name__)

#: How many missing video paths a report quotes; enough to see a wrong root or a wrong layout.
MISSING_EXAMPLES = 3


@dataclass(frozen=True)
class SplitReport:
    """What happened to one split: rows in the file, rows written, and why the others were left out.

    ``unreadable_videos`` is None when the videos were not probed, else unreadable videos counted by reason;
    ``unreadable_examples`` quotes the sampler's message for a few of them, and ``unreadable_example_reasons``
    their reasons (``decode_failed`` is not ``unreadable``: the report prints each under its own label).
    """

    split: str
    source_file: Path
    output: Path
    rows_read: int
    rows_written: int
    missing_video_rows: int
    missing_videos: int
    missing_examples: tuple[str, ...]
    skipped: dict[str, int]
    unreadable_video_rows: int = 0
    unreadable_videos: dict[str, int] | None = None
    unreadable_examples: tuple[str, ...] = ()
    unreadable_example_reasons: tuple[str, ...] = ()


def preprocess_split(
    parsed: SplitRecords,
    out_dir: Path,
    *,
    limit: int | None = None,
    check: bool = False,
    check_workers: int = 4,
) -> SplitReport:
    """Write the rows whose video exists to ``out_dir/<split>.parquet`` (the first ``limit`` of them if given).

    Missing videos are counted over the whole split even with ``limit``, so a quick run still shows them;
    with ``check`` every present video is probed too (``check_workers`` at a time) and the rows of those
    that cannot be served are left out.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    usable, missing = _partition_by_video(parsed.records)
    missing_paths = list(dict.fromkeys(r.video_path for r in missing))
    problems: dict[str, VideoProblem] | None = None
    unreadable: list[VideoQARecord] = []
    if check:
        problems = check_videos((r.video_path for r in usable), workers=check_workers)
        unreadable = [r for r in usable if r.video_path in problems]
        usable = [r for r in usable if r.video_path not in problems]
        if problems:
            logger.warning(
                "%s: %d rows left out because %d videos cannot be read", parsed.split, len(unreadable), len(problems)
            )
    if not usable:
        raise ValueError(_no_usable_rows_message(parsed, missing_paths, problems or {}))
    if missing:
        logger.warning(
            "%s: %d rows left out because %d video files are missing, e.g. %s",
            parsed.split,
            len(missing),
            len(missing_paths),
            missing_paths[:MISSING_EXAMPLES],
        )
    kept = usable[:limit] if limit is not None else usable
    output = Path(out_dir) / f"{parsed.split}.parquet"
    write_parquet([to_verl_row(record, i) for i, record in enumerate(kept)], output)
    logger.info("wrote %d rows to %s", len(kept), output)
    return SplitReport(
        split=parsed.split,
        source_file=parsed.path,
        output=output,
        rows_read=parsed.rows_read,
        rows_written=len(kept),
        missing_video_rows=len(missing),
        missing_videos=len(missing_paths),
        missing_examples=tuple(missing_paths[:MISSING_EXAMPLES]),
        skipped=dict(parsed.skipped),
        unreadable_video_rows=len(unreadable),
        unreadable_videos=None if problems is None else dict(Counter(p.reason for p in problems.values())),
        unreadable_examples=tuple(p.detail for p in list((problems or {}).values())[:MISSING_EXAMPLES]),
        unreadable_example_reasons=tuple(p.reason for p in list((problems or {}).values())[:MISSING_EXAMPLES]),
    )


def _partition_by_video(records: Sequence[VideoQARecord]) -> tuple[list[VideoQARecord], list[VideoQARecord]]:
    """(records whose video file exists, the others); each file is checked once, videos have many questions."""
    exists: dict[str, bool] = {}
    usable: list[VideoQARecord] = []
    missing: list[VideoQARecord] = []
    for record in records:
        if record.video_path not in exists:
            exists[record.video_path] = Path(record.video_path).is_file()
        (usable if exists[record.video_path] else missing).append(record)
    return usable, missing


def _no_usable_rows_message(parsed: SplitRecords, missing_paths: list[str], problems: dict[str, VideoProblem]) -> str:
    where = f"split {parsed.split!r} ({parsed.path})"
    if problems:
        reasons = dict(Counter(p.reason for p in problems.values()))
        example = next(iter(problems.values())).detail
        return (
            f"{where}: no usable rows: {len(missing_paths)} videos are missing and {len(problems)} cannot be read "
            f"({reasons}, e.g. {example})"
        )
    if missing_paths:
        examples = ", ".join(missing_paths[:MISSING_EXAMPLES])
        return (
            f"{where}: no usable rows: all {len(parsed.records)} valid rows point to missing video files "
            f"({len(missing_paths)} videos, e.g. {examples}); check the video folder"
        )
    return f"{where}: no usable rows ({parsed.rows_read} rows read, skipped {parsed.skipped or 'none'})"


def format_report(reports: Sequence[SplitReport]) -> str:
    """A plain-text table for the CLI, then the missing-video examples and outputs of each split."""
    header = ("split", "rows read", "written", "missing videos (rows)", "skipped", "unreadable videos (rows)")
    table = [header] + [
        (
            r.split,
            str(r.rows_read),
            str(r.rows_written),
            f"{r.missing_videos} ({r.missing_video_rows})",
            _format_skipped(r.skipped),
            _format_unreadable(r),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    for r in reports:
        lines.append(f"{r.split}: {r.source_file} -> {r.output}")
        lines.extend(f"  missing: {path}" for path in r.missing_examples)
        if r.missing_videos > len(r.missing_examples):
            lines.append(f"  ... and {r.missing_videos - len(r.missing_examples)} more missing videos")
        reasons = r.unreadable_example_reasons or ("unreadable",) * len(r.unreadable_examples)
        lines.extend(f"  {reason}: {detail}" for reason, detail in zip(reasons, r.unreadable_examples, strict=True))
        extra = sum((r.unreadable_videos or {}).values()) - len(r.unreadable_examples)
        if extra > 0:
            lines.append(f"  ... and {extra} more unreadable videos")
    return "\n".join(lines)


def _format_skipped(skipped: dict[str, int]) -> str:
    if not skipped:
        return "0"
    details = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
    return f"{sum(skipped.values())} ({details})"


def _format_unreadable(report: SplitReport) -> str:
    """``-`` when the videos were not probed, else ``videos (rows)`` and the count by reason."""
    if report.unreadable_videos is None:
        return "-"
    total = sum(report.unreadable_videos.values())
    reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(report.unreadable_videos.items()))
    return f"{total} ({report.unreadable_video_rows})" + (f" {reasons}" if reasons else "")
