"""The curves tool reads what verl's own file logger writes, across a resumed run and the legacy trainer's names."""

from __future__ import annotations

from pathlib import Path

import pytest
from verl.utils.tracking import FileLogger

from sparse_video_r1.tools import curves


def _log(path: Path, steps: dict[int, dict[str, float]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("project", "run")
    for step, data in steps.items():
        logger.log(data=data, step=step)
    logger.finish()


def test_a_resumed_run_reads_as_one_curve_with_the_later_file_winning(tmp_path, monkeypatch):
    _log(tmp_path / "metrics_20261201T000000.jsonl", {1: {"dialogue/request_share": 0.25}, 2: {"x": 1.0}}, monkeypatch)
    # The resumed run repeats step 2 and goes on; the legacy trainer's names lose their timing_s/ prefix.
    second = {2: {"timing_s/dialogue/request_share": 0.5}, 3: {"timing_s/dialogue/request_share": 0.75}}
    _log(tmp_path / "metrics_20261201T010000.jsonl", second, monkeypatch)
    with (tmp_path / "metrics_20261201T010000.jsonl").open("a") as torn:
        torn.write('{"step": 4, "data": {"dialogue/re')  # a run killed mid-write
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "1.jsonl").write_text('{"input": "x", "output": "y", "score": 1.0, "step": 1}\n')

    scalars = curves.read_run(tmp_path)
    assert sorted(scalars) == [1, 2, 3]
    assert [scalars[step]["dialogue/request_share"] for step in (1, 2, 3)] == [0.25, 0.5, 0.75]
    assert scalars[2]["x"] == 1.0
    png = curves.plot_curves(scalars, tmp_path / "curves.png", smooth=2)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_folder_without_logs_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        curves.read_run(tmp_path)


def test_rolling_mean_uses_only_the_steps_so_far():
    assert curves.rolling([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
