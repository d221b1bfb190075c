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
        repeats=2,
        seed=0,
    )
    payload = rollout.run(settings, tmp_path)
    assert len(payload["results"]) == 4  # 2 repeats x 2 methods, alternating
    by_method = {entry["method"]: entry for entry in payload["results"] if entry["repeat"] == 0}
    adaptive, single = by_method["adaptive"], by_method["single_turn"]
    # The forced policy takes the multi-turn path: a request turn, then the answer, with equal frames.
    assert adaptive["assistant_turns_mean"] == 2 and single["assistant_turns_mean"] == 1
    assert adaptive["stop_reasons"] == single["stop_reasons"] == {"answered": 2}
    assert adaptive["frames_used_mean"] == single["frames_used_mean"] == 4
    for entry in (adaptive, single):
        assert entry["generated_tokens"] > 0 and entry["dialogues_per_s"] > 0
        assert 0 <= entry["engine_idle_share"] <= 1 and 0 <= entry["decode_overlapping_engine_share"] <= 1
    for method in ("adaptive", "single_turn"):  # each batch reports its own decoding, not the running total
        first, second = (e["sampler"] for e in payload["results"] if e["method"] == method)
        for stats in (first, second):  # how many frames decoding took varies with the threads' timing
            assert (stats["requests"], stats["frames_served"], stats["videos_opened"]) == (first["requests"], 8, 1)
            assert stats["frames_decoded"] >= stats["frames_served"] - stats["cache_hits"] > 0
    for median in payload["medians"]:
        rates = [e["dialogues_per_s"] for e in payload["results"] if e["method"] == median["method"]]
        assert median["repeats"] == 2 and median["dialogues_per_s_range"] == [min(rates), max(rates)]
        assert min(rates) <= median["dialogues_per_s"] <= max(rates)
    assert "adaptive runs at" in rollout.table(payload)


def test_actor_update_benchmark_runs_verls_worker_on_cpu_and_the_fused_path_is_nearer_float32(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import actor_update

    settings = actor_update.Settings(model=str(tiny_model_dir), device="cpu", questions=1, group=4, repeats=1)
    payload = actor_update.run(settings, tmp_path, tmp_path / "work", profile=False)
    results = {entry["variant"]: entry for entry in payload["results"]}
    assert set(results) == set(actor_update.VARIANTS)
    for entry in results.values():
        assert entry["dialogues"] == 4 and entry["first_update"]["actor/grad_norm"] > 0
    assert results[actor_update.REFERENCE]["max_log_prob_difference"] == 0
    per_token, fused = results["per_token_log_probs"], results["fused_log_probs"]
    assert fused["mean_log_prob_difference"] < per_token["mean_log_prob_difference"]
    assert "float32_reference" in actor_update.table(payload)


def test_profile_summary_groups_a_pool_and_merges_a_functions_lines() -> None:
    import profile_summary

    raw = [
        'process 7:"python run.py";thread (11): MainThread;main (run.py:3);wait (threading.py:320) 2\n',
        'process 7:"python run.py";thread (12): svr1-decode_0;work (frames.py:10);decode (frames.py:40) 5\n',
        'process 7:"python run.py";thread (13): svr1-decode_1;work (frames.py:10);decode (frames.py:41) 3\n',
        'process 7:"python run.py";thread (13);work (frames.py:10);convert (frames.py:60) 2\n',
        'process 7:"python run.py";thread (14): decode-decoding frames [4, 9];work (frames.py:10) 1\n',
        'process 7:"python run.py";process 8:"VLLM::EngineCore";thread (15): MainThread;step (core.py:1) 4\n',
    ]
    rows = profile_summary.summarize(profile_summary.parse(raw), top=5)
    decode, engine, main, one_off = rows
    assert (decode["thread"], decode["samples"], decode["share_of_process"]) == ("svr1-decode", 10, 10 / 13)
    assert (engine["process"], engine["share_of_process"]) == ("VLLM::EngineCore", 1.0)  # a child: its own process
    assert (one_off["thread"], one_off["samples"]) == ("decode-decoding frames", 1)
    assert decode["own"][0] == {"function": "decode (frames.py)", "share": 0.8}  # lines 40 and 41 merged
    assert decode["inclusive"] == [  # work (frames.py) is in every stack: an entry point, left out
        {"function": "decode (frames.py)", "share": 0.8},
        {"function": "convert (frames.py)", "share": 0.2},
    ]
    assert (main["thread"], main["process"]) == ("MainThread", "python run.py")
    with pytest.raises(ValueError, match="line 1"):
        profile_summary.parse(["no count here\n"])


def test_sft_step_benchmark_runs_the_cold_start_both_ways_on_cpu(
    tiny_model_dir: Path, make_video, tmp_path: Path
) -> None:
    import json

    import sft_step

    from sparse_video_r1.env.config import DialogueRules
    from sparse_video_r1.env.dialogue import VideoQA
    from sparse_video_r1.training.sft import SFTConfig, synthetic_traces

    video = str(make_video(num_frames=40, fps=10.0, width=320, height=240))
    sample = VideoQA(video, "Which?", ("a", "b", "c"), "B", "q0")
    traces = tmp_path / "traces.jsonl"
    lines = synthetic_traces([sample] * 3, [4.0] * 3, DialogueRules(), seed=0, request_probability=1.0)
    traces.write_text("".join(json.dumps(trace) + "\n" for trace in lines))
    config = SFTConfig(model=str(tiny_model_dir), traces=str(traces), out=str(tmp_path), device="cpu", dtype="float32")
    payload = sft_step.run(config, sft_step.SparseVideoConfig(), dialogues=2, work=tmp_path)
    per_window, batched = payload["results"]
    assert (per_window["variant"], batched["variant"]) == ("per_window", "batched_windows")
    assert per_window["dialogues"] == batched["dialogues"] == 2
    assert batched["loss"] == pytest.approx(per_window["loss"], rel=1e-5)  # same weights, same arithmetic
    assert batched["aten_ops_one_dialogue"] < per_window["aten_ops_one_dialogue"]
    assert "batched_windows" in sft_step.table(payload)
