"""Turning video multiple-choice datasets (NExT-QA, or any JSONL) into verl parquet rows.

Reading and validating the rows, NExT-QA's question groups, writing the parquet files and checking every video
before training. It may import :mod:`sparse_video_r1.env` only.
"""

from sparse_video_r1.data.jsonl import read_jsonl
from sparse_video_r1.data.nextqa import QUESTION_GROUPS, read_nextqa_split
from sparse_video_r1.data.preprocess import SplitReport, format_report, preprocess_split
from sparse_video_r1.data.records import BadRowError, SplitRecords, VideoQARecord, to_verl_row, write_parquet

__all__ = [
    "QUESTION_GROUPS",
    "BadRowError",
    "SplitRecords",
    "SplitReport",
    "VideoQARecord",
    "format_report",
    "preprocess_split",
    "read_jsonl",
    "read_nextqa_split",
    "to_verl_row",
    "write_parquet",
]
