"""``--check-videos``: every video is decoded as a rollout would read it; unreadable ones are named per split.

The NExT-QA fixture tree gets real mp4s, then some are broken in ways the sampler names differently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_preprocess_nextqa import CSV_ROWS, WRITTEN, fixture_rows, load_cli, make_raw_root
from test_reliability_videos import zero_frames

from sparse_video_r1.data import preprocess_split, read_nextqa_split
from sparse_video_r1.data.nextqa import load_video_map, video_file
from sparse_video_r1.data.preprocess import format_report
from sparse_video_r1.data.video_check import check_videos
from sparse_video_r1.synthetic.videos import write_index_video

FIXTURES = Path(__file__).parent / "fixtures" / "nextqa"
#: train videos made unreadable: a zero-byte file and text posing as mp4 (4 questions each); 1 stays good.
ZERO_BYTES, TEXT = "3261079025", "3897746373"
MAPPING = load_video_map(FIXTURES / "map_vid_vidorID.json")


def broken_root(tmp_path: Path) -> Path:
    root = make_raw_root(tmp_path / "raw")
    video_file(root, MAPPING[ZERO_BYTES]).write_bytes(b"")
    video_file(root, MAPPING[TEXT]).write_text("not a video\n")
    return root


def rows_of(split: str, video: str) -> int:
    return sum(1 for row in fixture_rows(split) if row["video"] == video)


def test_unreadable_videos_are_left_out_and_counted_by_reason(tmp_path: Path) -> None:
    root = broken_root(tmp_path)
    report = preprocess_split(read_nextqa_split(root, "train"), tmp_path / "out", check=True, check_workers=2)
    left_out = rows_of("train", ZERO_BYTES) + rows_of("train", TEXT)
    assert report.unreadable_videos == {"unreadable": 2}
    assert report.unreadable_video_rows == left_out
    assert report.rows_written == WRITTEN["train"] - left_out
    empty, text = (str(video_file(root, MAPPING[video])) for video in (ZERO_BYTES, TEXT))
    examples = {detail.split(": ")[0]: detail for detail in report.unreadable_examples}
    assert examples.keys() == {empty, text}
    assert examples[empty] == f"{empty}: file is empty (0 bytes)"
    assert examples[text].startswith(f"{text}: cannot open it: ")
    written = pd.read_parquet(tmp_path / "out" / "train.parquet")["extra_info"].map(lambda e: e["video_id"])
    assert not {ZERO_BYTES, TEXT} & set(written)


def test_without_the_check_unreadable_videos_are_written_and_not_probed(tmp_path: Path) -> None:
    report = preprocess_split(read_nextqa_split(broken_root(tmp_path), "train"), tmp_path / "out")
    assert report.unreadable_videos is None and report.rows_written == WRITTEN["train"]


def test_the_cli_reports_unreadable_videos_per_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = broken_root(tmp_path)
    args = ["--raw", str(root), "--out", str(tmp_path / "out"), "--check-videos", "--check-workers", "2"]
    assert load_cli().main(args) == 0
    out = capsys.readouterr().out
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert table["test"][6:] == ["0", "(0)"]  # probed, nothing wrong (its missing video is counted apart)
    left_out = rows_of("train", ZERO_BYTES) + rows_of("train", TEXT)
    assert table["train"][6:] == ["2", f"({left_out})", "unreadable=2"]
    assert table["train"][2] == str(WRITTEN["train"] - left_out)
    assert out.count("  unreadable: ") == 2 and "file is empty (0 bytes)" in out
    assert load_cli().main(["--raw", str(root), "--out", str(tmp_path / "plain"), "--splits", "test"]) == 0
    plain = capsys.readouterr().out.splitlines()[1].split()
    assert plain[1] == str(CSV_ROWS["test"]) and plain[-1] == "-"  # not probed


def test_a_split_whose_every_video_is_unreadable_is_an_error_naming_the_reason(tmp_path: Path) -> None:
    root = make_raw_root(tmp_path / "raw")
    for video in ("2809330695", "8531675050"):  # val's third video is missing
        video_file(root, MAPPING[video]).write_bytes(b"")
    with pytest.raises(ValueError, match=r"split 'val'.*no usable rows.*cannot be read.*unreadable"):
        preprocess_split(read_nextqa_split(root, "val"), tmp_path / "out", check=True)


def test_the_probe_names_each_kind_of_bad_video(tmp_path: Path) -> None:
    good = write_index_video(tmp_path / "good.mp4", num_frames=60, fps=10.0, keyframe_interval=10)
    (tmp_path / "empty.mp4").touch()
    paths = {
        "good": good,
        "missing": tmp_path / "missing.mp4",
        "empty": tmp_path / "empty.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "middle_gop_zeroed": zero_frames(good, tmp_path / "middle.mp4", range(30, 40)),
    }
    paths["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    problems = check_videos([str(p) for p in [*paths.values(), good]], workers=2)
    reasons = {name: problems[str(path)].reason for name, path in paths.items() if str(path) in problems}
    assert reasons == {
        "missing": "missing",
        "empty": "unreadable",
        "truncated": "unreadable",
        "middle_gop_zeroed": "decode_failed",  # the probe decodes the middle frame, 30
    }


def test_the_report_prints_each_problem_under_its_own_reason(tmp_path: Path) -> None:
    """A video that opens but cannot decode the frame the probe asks for is ``decode_failed:``, not ``unreadable:``."""
    root = make_raw_root(tmp_path / "raw")
    empty, damaged = (video_file(root, MAPPING[video]) for video in (ZERO_BYTES, TEXT))  # train keeps a good one
    empty.write_bytes(b"")
    good = write_index_video(tmp_path / "good.mp4", num_frames=60, fps=10.0, keyframe_interval=10)
    zero_frames(good, damaged, range(30, 40))  # the middle GOP, which the probe decodes
    report = preprocess_split(read_nextqa_split(root, "train"), tmp_path / "out", check=True, check_workers=2)
    assert report.unreadable_videos == {"decode_failed": 1, "unreadable": 1}
    quoted = [line.split(": ")[:2] for line in format_report([report]).splitlines() if line.startswith("  ")]
    labelled = {path: label.strip() for label, path in quoted}
    assert labelled[str(damaged)] == "decode_failed" and labelled[str(empty)] == "unreadable"
