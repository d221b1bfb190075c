"""The GPU rollout benchmark's code path on CPU (transformers backend, tiny model), so the GPU run cannot die
on a typo, and the interval arithmetic its overlap figure rests on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rollout  # benchmarks/ is a folder of scripts, not a package


def test_overlap_of_interval_sets() -> None:
    spans = rollout.Intervals()
    for start, end in [(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]:
        spans.add(start, end)
    merged = spans.union()
    assert merged == [(0.0, 2.0), (3.0, 4.0)] and rollout.measure(merged) == 3.0
    assert rollout.overlap(merged, [(1.5, 3.5)]) == pytest.approx(1.0)


def test_rollout_benchmark_plays_both_methods_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = rollout.Settings(
        backend="transformers",
        model=str(tiny_model_dir),
        dialogues=(2,),
        group=2,
        initial_frames=2,
        requested_frames=2,
        video_seconds=2,
        videos=1,
        prefix_caching=True,
        warmup=1,
        seed=0,
    )
    payload = rollout.run(settings, tmp_path)
    by_method = {entry["method"]: entry for entry in payload["results"]}
    adaptive, single = by_method["adaptive"], by_method["single_turn"]
    # The forced policy takes the multi-turn path: a request turn, then the answer, with equal frames.
    assert adaptive["assistant_turns_mean"] == 2 and single["assistant_turns_mean"] == 1
    assert adaptive["stop_reasons"] == single["stop_reasons"] == {"answered": 2}
    assert adaptive["frames_used_mean"] == single["frames_used_mean"] == 4
    for entry in (adaptive, single):
        assert entry["generated_tokens"] > 0 and entry["dialogues_per_s"] > 0
        assert 0 <= entry["engine_idle_share"] <= 1 and 0 <= entry["decode_overlapping_engine_share"] <= 1
    assert "adaptive runs at" in rollout.table(payload)
