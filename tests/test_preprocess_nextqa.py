"""NExT-QA preprocessing on real release rows: one parquet row per CSV row, missing videos and bad rows reported."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from _rlhf_loading import load_rlhf_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_video_r1.data import BadRowError, format_report, preprocess_split, read_nextqa_split, to_verl_row
from sparse_video_r1.data.nextqa import QUESTION_GROUPS, load_video_map
from sparse_video_r1.env.config import AGENT_NAME
from sparse_video_r1.env.protocol import question_text
from sparse_video_r1.synthetic.videos import write_index_video

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "dataset" / "NExT_QA.py"
FIXTURES = Path(__file__).parent / "fixtures" / "nextqa"
SPLITS = ("train", "val", "test")
#: Videos whose mp4 the tests do not create, and the split whose questions they carry (3 in val, 4 in test).
MISSING = {"3869005094": "val", "4070768447": "test"}
CSV_ROWS = {"train": 12, "val": 12, "test": 12}
WRITTEN = {"train": 12, "val": 9, "test": 8}
LETTERS = "ABCDE"


def fixture_rows(split: str) -> list[dict[str, str]]:
    with (FIXTURES / f"{split}.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def csv_layout(root: Path, layout: str) -> dict[str, Path]:
    """Where each file goes: the README's unzip layout ("release") or everything in nextqa/ ("flat")."""
    if layout == "release":
        return {
            "map": root / "map_vid_vidorID.json",
            "train": root / "nextqa" / "train.csv",
            "val": root / "nextqa" / "val.csv",
            "test": root / "test-data-nextqa" / "test.csv",
        }
    return {"map": root / "nextqa" / "map_vid_vidorID.json", **{s: root / "nextqa" / f"{s}.csv" for s in SPLITS}}


def make_raw_root(root: Path, layout: str = "release", missing: Collection[str] = tuple(MISSING)) -> Path:
    """A NExT-QA tree with the fixture CSVs and a real tiny mp4 at every mapped path except ``missing``."""
    for name, dest in csv_layout(root, layout).items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / ("map_vid_vidorID.json" if name == "map" else f"{name}.csv"), dest)
    for video_id, mapped in load_video_map(FIXTURES / "map_vid_vidorID.json").items():
        if video_id not in missing:
            write_index_video(root / "NExTVideo" / f"{mapped}.mp4", num_frames=3)
    return root


@pytest.fixture(params=["release", "flat"])
def raw_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_raw_root(tmp_path / "raw", request.param)


def load_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nextqa_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_script_writes_every_split_and_prints_summary(tmp_path: Path) -> None:
    root = make_raw_root(tmp_path / "raw")
    out = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find the package itself
    result = subprocess.run(
        [sys.executable, "dataset/NExT_QA.py", "--raw", str(root), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    table = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:4]}
    for split in SPLITS:
        assert pd.read_parquet(out / f"{split}.parquet").shape[0] == WRITTEN[split]
        assert table[split][1:3] == [str(CSV_ROWS[split]), str(WRITTEN[split])]
    assert table["val"][3:5] == ["1", "(3)"] and table["test"][3:5] == ["1", "(4)"]
    assert table["train"][3:6] == ["0", "(0)", "0"]
    assert "1124/3869005094.mp4" in result.stdout and "1110/4070768447.mp4" in result.stdout


def test_each_csv_row_becomes_its_own_record(raw_root: Path) -> None:
    video_map = load_video_map(FIXTURES / "map_vid_vidorID.json")
    for split in SPLITS:
        parsed = read_nextqa_split(raw_root, split)
        rows = fixture_rows(split)
        assert (parsed.rows_read, parsed.skipped, len(parsed.records)) == (len(rows), {}, len(rows))
        assert len({r.qid for r in parsed.records}) == len(rows)
        for record, row in zip(parsed.records, rows, strict=True):
            assert record.qid == f"{row['video']}_{row['qid']}"
            assert record.question == row["question"].strip()
            assert record.options == tuple(row[f"a{i}"].strip() for i in range(5))
            assert record.answer_index == int(row["answer"])
            assert record.question_type == row["type"] and record.question_type in QUESTION_GROUPS
            expected_path = raw_root.resolve() / "NExTVideo" / f"{video_map[row['video']]}.mp4"
            assert (record.video_path, record.source, record.split) == (str(expected_path), "nextqa", split)


def test_all_type_codes_and_literal_none_option_survive(tmp_path: Path) -> None:
    """pandas would read the option "none" as NaN; the fixtures also cover all eight NExT-QA type codes."""
    root = make_raw_root(tmp_path / "raw")
    records = [r for split in SPLITS for r in read_nextqa_split(root, split).records]
    assert {r.question_type for r in records} == set(QUESTION_GROUPS)
    assert read_nextqa_split(root, "test").records[0].options == ("one", "two", "three", "none", "four")


def test_verl_row_schema(tmp_path: Path) -> None:
    root = make_raw_root(tmp_path / "raw")
    record = read_nextqa_split(root, "val").records[0]
    question = "how does the baby try to get the pink toy near the end"
    options = ["call for help", "pull the pink toy", "kick his legs", "pull the string", "move closer to the toy"]
    assert to_verl_row(record, 7) == {
        "data_source": "nextqa",
        "agent_name": AGENT_NAME,
        "prompt": [{"role": "user", "content": question_text(question, options)}],
        "ability": "video_qa",
        "reward_model": {"style": "rule", "ground_truth": "B"},
        "extra_info": {
            "index": 7,
            "split": "val",
            "qid": "2809330695_9",
            "video_id": "2809330695",
            "video_path": str(root.resolve() / "NExTVideo" / "1019" / "2809330695.mp4"),
            "question": question,
            "options": options,
            "answer": "B",
            "question_type": "CH",
        },
    }


def test_preprocess_reports_missing_videos_per_split(raw_root: Path, tmp_path: Path) -> None:
    reports = {s: preprocess_split(read_nextqa_split(raw_root, s), tmp_path / "out") for s in SPLITS}
    for split, report in reports.items():
        missing_rows = sum(1 for r in fixture_rows(split) if MISSING.get(r["video"]) == split)
        assert (report.rows_read, report.rows_written) == (CSV_ROWS[split], WRITTEN[split])
        assert (report.missing_video_rows, report.missing_videos) == (missing_rows, int(missing_rows > 0))
        assert report.output == tmp_path / "out" / f"{split}.parquet"
    assert reports["val"].missing_examples[0].endswith("NExTVideo/1124/3869005094.mp4")
    assert reports["test"].missing_examples[0].endswith("NExTVideo/1110/4070768447.mp4")
    assert reports["train"].missing_examples == ()
    summary = format_report(list(reports.values()))
    assert "missing: " + reports["val"].missing_examples[0] in summary

    frame = pd.read_parquet(tmp_path / "out" / "val.parquet")
    expected = [r for r in fixture_rows("val") if r["video"] not in MISSING]
    assert list(frame["extra_info"].map(lambda e: e["index"])) == list(range(len(expected)))
    for (_, row), source in zip(frame.iterrows(), expected, strict=True):
        info = row["extra_info"]
        assert info["qid"] == f"{source['video']}_{source['qid']}" and info["question"] == source["question"]
        assert row["reward_model"]["ground_truth"] == info["answer"] == LETTERS[int(source["answer"])]
        assert list(info["options"]) == [source[f"a{i}"].strip() for i in range(5)]
        assert Path(info["video_path"]).is_file()


def test_limit_keeps_the_first_usable_rows_but_counts_all_missing(raw_root: Path, tmp_path: Path) -> None:
    report = preprocess_split(read_nextqa_split(raw_root, "val"), tmp_path, limit=2)
    assert (report.rows_read, report.rows_written, report.missing_video_rows) == (12, 2, 3)
    assert pd.read_parquet(tmp_path / "val.parquet").shape[0] == 2


def test_zero_usable_rows_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_raw_root(tmp_path / "raw", missing={"2809330695", "8531675050", "3869005094"})
    with pytest.raises(ValueError, match=r"split 'val'.*no usable rows.*12 valid rows.*3 videos"):
        preprocess_split(read_nextqa_split(root, "val"), tmp_path / "out")
    assert not (tmp_path / "out" / "val.parquet").exists()
    assert load_cli().main(["--raw", str(root), "--out", str(tmp_path / "out"), "--splits", "val"]) == 1
    assert "error: split 'val'" in capsys.readouterr().err


def test_missing_files_name_every_path_tried(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        read_nextqa_split(tmp_path, "val")
    assert str(tmp_path / "map_vid_vidorID.json") in str(error.value)
    assert str(tmp_path / "nextqa" / "map_vid_vidorID.json") in str(error.value)
    shutil.copyfile(FIXTURES / "map_vid_vidorID.json", tmp_path / "map_vid_vidorID.json")
    with pytest.raises(FileNotFoundError) as error:
        read_nextqa_split(tmp_path, "test")
    assert str(tmp_path / "test-data-nextqa" / "test.csv") in str(error.value)
    assert str(tmp_path / "nextqa" / "test.csv") in str(error.value)


def _good_line(index: int) -> list[str]:
    with (FIXTURES / "val.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))[index + 1]


def _csv_line(fields: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue().encode("utf-8")


def _bad_line(kind: str) -> bytes:
    """One malformed row of each kind, made from a real row (columns: 0 video, 4 question, 5 answer, 7 type, 8 a0)."""
    fields = _good_line(0)
    if kind == "empty_column":
        fields[8] = " "
    elif kind == "short_row":
        fields = fields[:9]
    elif kind == "extra_field":
        fields.append("surplus")
    elif kind == "answer_7":
        fields[5] = "7"
    elif kind == "unknown_type":
        fields[7] = "XX"
    elif kind == "unmapped_video":
        fields[0] = "1234567890"
    elif kind == "duplicate_qid":
        fields = _good_line(3)
        fields[4] = "a different question with the qid of line 5"
    elif kind == "bad_utf8":
        return _csv_line(fields).replace(b"how does", b"how d\xf6es")
    return _csv_line(fields)


BAD_KINDS = {
    "empty_column": "missing_field",
    "short_row": "missing_field",
    "extra_field": "bad_field_count",
    "answer_7": "bad_answer",
    "unknown_type": "bad_type",
    "unmapped_video": "unmapped_video",
    "bad_utf8": "bad_utf8",
    "duplicate_qid": "duplicate_qid",
}


def write_val_with(root: Path, bad_lines: list[bytes], at: int = 8) -> Path:
    """The fixture val.csv with ``bad_lines`` inserted from file line ``at`` on (line 1 is the header)."""
    lines = (FIXTURES / "val.csv").read_bytes().splitlines(keepends=True)
    path = csv_layout(root, "release")["val"]
    path.write_bytes(b"".join(lines[: at - 1] + bad_lines + lines[at - 1 :]))
    return path


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_row_names_file_and_line_or_is_counted(kind: str, tmp_path: Path) -> None:
    root = make_raw_root(tmp_path / "raw")
    path = write_val_with(root, [_bad_line(kind)])
    with pytest.raises(BadRowError, match=rf"^{re.escape(str(path))}:8: {BAD_KINDS[kind]}: ") as error:
        read_nextqa_split(root, "val")
    assert isinstance(error.value, ValueError) and error.value.line == 8
    parsed = read_nextqa_split(root, "val", skip_bad_rows=True)
    assert (parsed.rows_read, len(parsed.records), parsed.skipped) == (13, 12, {BAD_KINDS[kind]: 1})


def test_skipping_counts_bad_rows_by_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_raw_root(tmp_path / "raw")
    write_val_with(root, [_bad_line(kind) for kind in sorted(BAD_KINDS)])
    with pytest.raises(BadRowError, match=r"val\.csv:8: "):
        read_nextqa_split(root, "val")
    args = ["--raw", str(root), "--out", str(tmp_path / "out"), "--splits", "val", "--skip-bad-rows"]
    assert load_cli().main(args) == 0
    expected = "8 (bad_answer=1, bad_field_count=1, bad_type=1, bad_utf8=1, duplicate_qid=1, missing_field=2, "
    expected += "unmapped_video=1)"
    assert expected in capsys.readouterr().out
    assert pd.read_parquet(tmp_path / "out" / "val.parquet").shape[0] == WRITTEN["val"]


def test_header_without_a_required_column_is_a_file_error(tmp_path: Path) -> None:
    root = make_raw_root(tmp_path / "raw")
    path = csv_layout(root, "release")["val"]
    path.write_text(path.read_text(encoding="utf-8").replace(",type,", ",kind,", 1), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: header lacks required columns \['type'\]"):
        read_nextqa_split(root, "val", skip_bad_rows=True)


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=_TEXT, options=st.lists(_TEXT, min_size=5, max_size=5), answer=st.integers(0, 4))
def test_csv_quoting_round_trips(tmp_path: Path, question: str, options: list[str], answer: int) -> None:
    """Commas, quotes and any Unicode in questions and options come back exactly (up to outer whitespace)."""
    root = tmp_path / "raw"
    if not root.exists():
        make_raw_root(root)
    fields = ["2809330695", "300", "320", "240", question, str(answer), "99", "CW", *options]
    write_val_with(root, [_csv_line(fields)], at=2)
    (record,) = [r for r in read_nextqa_split(root, "val").records if r.qid == "2809330695_99"]
    assert (record.question, record.options) == (question.strip(), tuple(o.strip() for o in options))
    assert record.answer_index == answer


def test_rlhf_dataset_loads_the_parquet(tmp_path: Path) -> None:
    raw_root = make_raw_root(tmp_path / "raw")
    report = preprocess_split(read_nextqa_split(raw_root, "test"), tmp_path / "out")
    dataset = load_rlhf_dataset([report.output], tmp_path / "cache")
    assert len(dataset) == WRITTEN["test"]
    first = dataset[0]
    record = read_nextqa_split(raw_root, "test").records[0]
    assert first["raw_prompt"] == [{"role": "user", "content": question_text(record.question, record.options)}]
    assert first["agent_name"] == AGENT_NAME and first["data_source"] == "nextqa" and first["index"] == 0
    assert first["extra_info"] == to_verl_row(record, 0)["extra_info"]
