"""The generic JSONL format: same records, same rules and the same parquet schema as NExT-QA."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
from _rlhf_loading import load_rlhf_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_video_r1.data import (
    BadRowError,
    VideoQARecord,
    preprocess_split,
    read_jsonl,
    to_verl_row,
    write_parquet,
)
from sparse_video_r1.env.config import AGENT_NAME
from sparse_video_r1.env.protocol import question_text
from sparse_video_r1.synthetic.videos import write_index_video

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "dataset" / "NExT_QA.py"


def write_jsonl(path: Path, rows: list[dict[str, Any] | str | bytes]) -> Path:
    """One line per item: dicts as JSON, strings and bytes verbatim (for blank and malformed lines)."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """``mine/qa.jsonl`` with relative, ``..`` and absolute video paths; ``videos/missing.mp4`` is not created."""
    for rel in ("mine/videos/a.mp4", "mine/videos/sub/b.mp4", "elsewhere/c.mp4", "shared/d.mp4"):
        write_index_video(tmp_path / rel, num_frames=3)
    write_jsonl(
        tmp_path / "mine" / "qa.jsonl",
        [
            {"video": "videos/a.mp4", "question": "what is shown", "options": ["x", "y"], "answer": 1, "id": "q-1"},
            {"video": "videos/a.mp4", "question": "why", "options": list("pqrst"), "answer": "E", "type": "CW"},
            "",
            {
                "video": str(tmp_path / "elsewhere/c.mp4"),
                "question": " how many ",
                "options": ["1", "2", "3"],
                "answer": "b",
            },
            {"video": "videos/missing.mp4", "question": "lost", "options": ["a", "b"], "answer": 0},
            {
                "video": "../shared/d.mp4",
                "question": "where",
                "options": ["in", "out", "up", "down"],
                "answer": 3,
                "id": 7,
            },
            {"video": "videos/sub/b.mp4", "question": "who", "options": ["me", "you"], "answer": "a"},
        ],
    )
    return tmp_path


def test_records_resolve_paths_ids_and_answers(dataset_dir: Path) -> None:
    parsed = read_jsonl(dataset_dir / "mine" / "qa.jsonl", "mine")
    assert (parsed.rows_read, parsed.skipped, len(parsed.records)) == (6, {}, 6)
    got = [(r.qid, r.video_path, r.question, r.answer_index, r.question_type) for r in parsed.records]
    assert got == [
        ("q-1", str(dataset_dir / "mine/videos/a.mp4"), "what is shown", 1, None),
        ("a_2", str(dataset_dir / "mine/videos/a.mp4"), "why", 4, "CW"),
        ("c_4", str(dataset_dir / "elsewhere/c.mp4"), "how many", 1, None),
        ("missing_5", str(dataset_dir / "mine/videos/missing.mp4"), "lost", 0, None),
        ("7", str(dataset_dir / "shared/d.mp4"), "where", 3, None),
        ("b_7", str(dataset_dir / "mine/videos/sub/b.mp4"), "who", 0, None),
    ]
    assert {(r.source, r.split) for r in parsed.records} == {("qa", "mine")}
    assert parsed.records[2].options == ("1", "2", "3") and parsed.records[1].video_id == "a"


def test_cli_script_writes_the_split_and_reports_missing_video(dataset_dir: Path) -> None:
    out = dataset_dir / "data"
    args = ["--jsonl", str(dataset_dir / "mine/qa.jsonl"), "--split", "mine", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "dataset/NExT_QA.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == ["mine", "6", "5", "1", "(1)", "0", "-"]  # videos not probed
    assert f"missing: {dataset_dir / 'mine/videos/missing.mp4'}" in result.stdout
    frame = pd.read_parquet(out / "mine.parquet")
    assert list(frame["reward_model"].map(lambda r: r["ground_truth"])) == ["B", "E", "B", "D", "A"]
    assert list(frame["extra_info"].map(lambda e: e["qid"])) == ["q-1", "a_2", "c_4", "7", "b_7"]
    assert set(frame["data_source"]) == {"qa"} and set(frame["agent_name"]) == {AGENT_NAME}


def test_zero_usable_rows_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(
        tmp_path / "gone.jsonl", [{"video": "nope.mp4", "question": "q", "options": ["a", "b"], "answer": 0}]
    )
    with pytest.raises(ValueError, match=r"split 'x'.*no usable rows.*nope\.mp4"):
        preprocess_split(read_jsonl(path, "x"), tmp_path / "out")
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match=r"no usable rows \(0 rows read"):
        preprocess_split(read_jsonl(empty, "x"), tmp_path / "out")
    spec = importlib.util.spec_from_file_location("nextqa_cli", CLI)
    cli: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--jsonl", str(path), "--split", "x", "--out", str(tmp_path / "out")]) == 1
    assert "error: split 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--jsonl", str(path), "--out", str(tmp_path / "out")])
    assert "--jsonl needs --split" in capsys.readouterr().err


GOOD = {"video": "v.mp4", "question": "q", "options": ["a", "b", "c"], "answer": 0}
BAD_LINES: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "no_question": ({**GOOD, "question": ""}, "missing_field"),
    "no_video": ({k: v for k, v in GOOD.items() if k != "video"}, "missing_field"),
    "no_answer": ({k: v for k, v in GOOD.items() if k != "answer"}, "missing_field"),
    "answer_7": ({**GOOD, "answer": 7}, "bad_answer"),
    "answer_letter_past_options": ({**GOOD, "answer": "D"}, "bad_answer"),
    "answer_bool": ({**GOOD, "answer": True}, "bad_answer"),
    "one_option": ({**GOOD, "options": ["a"]}, "bad_options"),
    "six_options": ({**GOOD, "options": list("abcdef")}, "bad_options"),
    "empty_option": ({**GOOD, "options": ["a", " "]}, "bad_options"),
    "question_not_text": ({**GOOD, "question": 3}, "bad_field"),
    "bad_utf8": (json.dumps(GOOD).encode().replace(b'"q"', b'"caf\xe9"'), "bad_utf8"),
    "not_json": (b'{"video": "v.mp4", "question": ', "bad_json"),
    "not_an_object": (b"[1, 2]", "bad_json"),
    "duplicate_id": ({**GOOD, "id": "dup"}, "duplicate_qid"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_names_file_and_line_or_is_counted(kind: str, tmp_path: Path) -> None:
    bad, reason = BAD_LINES[kind]
    path = write_jsonl(tmp_path / "qa.jsonl", [{**GOOD, "id": "dup"}, "", {**GOOD, "question": "other"}, bad, GOOD])
    with pytest.raises(BadRowError, match=rf"^{re.escape(str(path))}:4: {reason}: "):
        read_jsonl(path, "x")
    parsed = read_jsonl(path, "x", skip_bad_rows=True)
    assert (parsed.rows_read, len(parsed.records), parsed.skipped) == (4, 3, {reason: 1})


def test_skipping_counts_every_reason(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{**GOOD, "id": "dup"}, *(bad for bad, _ in BAD_LINES.values())])
    parsed = read_jsonl(path, "x", skip_bad_rows=True)
    expected: dict[str, int] = {}
    for _, reason in BAD_LINES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert (parsed.rows_read, len(parsed.records), parsed.skipped) == (len(BAD_LINES) + 1, 1, expected)


_TEXT = st.text(min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=_TEXT, options=st.lists(_TEXT, min_size=2, max_size=5), data=st.data())
def test_any_text_round_trips_to_the_verl_row(
    tmp_path: Path, question: str, options: list[str], data: st.DataObject
) -> None:
    answer = data.draw(st.integers(0, len(options) - 1))
    path = write_jsonl(
        tmp_path / "qa.jsonl", [{"video": "v.mp4", "question": question, "options": options, "answer": answer}]
    )
    (record,) = read_jsonl(path, "x").records
    row = to_verl_row(record, 0)
    assert row["extra_info"]["question"] == question.strip()
    assert row["extra_info"]["options"] == [o.strip() for o in options]
    assert row["reward_model"]["ground_truth"] == "ABCDE"[answer] == row["extra_info"]["answer"]


def test_rlhf_dataset_loads_jsonl_and_nextqa_rows_together(dataset_dir: Path, tmp_path: Path) -> None:
    """One schema for every source: verl concatenates parquet files, so a null-typed column would break it."""
    jsonl_report = preprocess_split(read_jsonl(dataset_dir / "mine/qa.jsonl", "train"), tmp_path / "a")
    nextqa_like = VideoQARecord(
        "123_4", "123", str(dataset_dir / "shared/d.mp4"), "why", ("a", "b", "c", "d", "e"), 2, "CW", "nextqa", "train"
    )
    write_parquet([to_verl_row(nextqa_like, 0)], tmp_path / "b" / "train.parquet")
    dataset = load_rlhf_dataset([jsonl_report.output, tmp_path / "b" / "train.parquet"], tmp_path / "cache")
    assert len(dataset) == 6
    first, last = dataset[0], dataset[5]
    assert first["raw_prompt"] == [{"role": "user", "content": question_text("what is shown", ["x", "y"])}]
    assert first["extra_info"]["question_type"] is None and first["extra_info"]["options"] == ["x", "y"]
    assert last["extra_info"]["question_type"] == "CW" and last["reward_model"]["ground_truth"] == "C"
    assert last["agent_name"] == AGENT_NAME and last["data_source"] == "nextqa"


def test_overlong_prompts_are_filtered_by_verl(dataset_dir: Path, tmp_path: Path) -> None:
    """The filter really tokenizes our prompt: a limit below every prompt's length drops every row."""
    report = preprocess_split(read_jsonl(dataset_dir / "mine/qa.jsonl", "train"), tmp_path / "out")
    assert len(load_rlhf_dataset([report.output], tmp_path / "cache", max_prompt_length=3)) == 0
