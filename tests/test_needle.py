"""The needle task: its videos hide the card from the opening frames, its cue says where the card is, its
reward measures where the dialogue looked, and its cold-start traces replay through the real Episode."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import script_env
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from verl.utils.import_utils import load_class_from_fqn

from sparse_video_r1.data.records import VideoQARecord
from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig
from sparse_video_r1.env.dialogue import Episode, VideoQA
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.env.protocol import OPTION_LETTERS, FrameRequest, parse_turn
from sparse_video_r1.synthetic import needle
from sparse_video_r1.training.sft import Trace, replay
from sparse_video_r1.training.verl_metrics import DialogueMetricsAgentLoopManager

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small needle dataset written by the CLI, with cold-start traces."""
    out = tmp_path_factory.mktemp("needle")
    needle.main(["--out", str(out), "--train", "6", "--val", "4", "--seed", "3", "--traces", "3"])
    return out


def extra_infos(task: Path, split: str) -> list[dict[str, Any]]:
    return pq.read_table(task / f"{split}.parquet").column("extra_info").to_pylist()


@pytest.fixture(scope="module")
def sampler() -> FrameSampler:
    return FrameSampler.from_config(needle.DIALOGUE.decoding)


def test_rows_are_verl_rows_carrying_the_needle(task: Path) -> None:
    table = pq.read_table(task / "train.parquet").to_pylist()
    assert len(table) == 6 and len(extra_infos(task, "val")) == 4
    for row in table:
        info = row["extra_info"]
        assert row["data_source"] == needle.DATA_SOURCE
        assert row["reward_model"]["ground_truth"] == info["answer"]
        assert info["options"] == list(needle.COLOURS)
        card = needle.Needle.from_extra_info(info)
        assert card.end - card.start == needle.NEEDLE_SECONDS
        assert card.end + needle.END_MARGIN_SECONDS <= card.duration
        assert needle.MIN_SECONDS <= card.duration <= needle.MAX_SECONDS
        assert os.path.isabs(info["video_path"]) and Path(info["video_path"]).is_file()


def test_the_card_is_visible_exactly_in_its_interval_and_every_other_frame_encodes_its_slot(
    task: Path, sampler: FrameSampler
) -> None:
    for info in extra_infos(task, "train"):
        card = needle.Needle.from_extra_info(info)
        video = sampler.info(info["video_path"])
        assert video.fps == needle.FPS and video.duration == card.duration
        frames = sampler.fetch(info["video_path"], [index / video.fps for index in range(video.num_frames)])
        slot = round(card.time / needle.SLOT_SECONDS - 0.5)
        shown = [frame.timestamp for frame in frames if needle.read_card(frame.image) is not None]
        assert shown == [t for t in (f.timestamp for f in frames) if card.shows(t)]
        assert len(shown) == needle.NEEDLE_SECONDS * needle.FPS
        for frame in frames:
            colour = needle.read_card(frame.image)
            if colour is None:
                assert needle.read_cue(frame.image) == slot
            else:
                assert OPTION_LETTERS[colour] == info["answer"]


def test_the_opening_frames_of_a_dialogue_never_show_the_card(task: Path, sampler: FrameSampler) -> None:
    for info in extra_infos(task, "train") + extra_infos(task, "val"):
        episode = Episode(VideoQA.from_extra_info(info), needle.DIALOGUE.dialogue, sampler)
        episode.start()
        assert len(episode.frames) == needle.DIALOGUE.dialogue.initial_frames
        assert all(needle.read_card(frame.image) is None for frame in episode.frames)
    rng = random.Random(0)
    for _ in range(500):  # many more draws than videos written: the rule, not luck
        video = needle.draw_video(rng, needle.DIALOGUE.dialogue.initial_frames)
        opening = needle.uniform_frame_times(video.duration, needle.DIALOGUE.dialogue.initial_frames)
        assert not any(video.needle.shows(t) for t in opening)


def test_uniform_hit_rate_matches_the_frames_a_uniform_dialogue_shows(task: Path, sampler: FrameSampler) -> None:
    infos = extra_infos(task, "train") + extra_infos(task, "val")
    for count in (4, 8, 16, 32):
        uniform = DialogueRules(initial_frames=count, max_total_frames=count, max_turns=1)
        hits = []
        for info in infos:
            episode = Episode(VideoQA.from_extra_info(info), uniform, sampler)
            episode.start()
            hits.append(any(needle.read_card(frame.image) is not None for frame in episode.frames))
        assert needle.uniform_hit_rate(infos, count) == pytest.approx(np.mean(hits))
    assert needle.uniform_hit_rate(infos, needle.DIALOGUE.dialogue.initial_frames) == 0.0


@pytest.mark.parametrize("slot", range(needle.NUM_SLOTS))
def test_the_cue_is_monotone_in_time_and_decodes_back_after_resizing(slot: int) -> None:
    image = Image.fromarray(needle.cue_image(slot)).resize((112, 112), Image.Resampling.BICUBIC)
    assert needle.read_cue(image) == slot
    assert needle.read_card(image) is None
    if slot:
        assert needle.cue_column(slot) > needle.cue_column(slot - 1)
        assert needle.slot_centre(slot) > needle.slot_centre(slot - 1)
    # The bars repeat once per visual token (SIDE px shown at 112 px: 28-px merges of 14-px patches) and every
    # slot's frame has the same mean grey: only where the bars sit tells the slots apart.
    assert needle.SIDE % needle.CUE_PERIOD == 0 and needle.NUM_SLOTS <= needle.CUE_PERIOD
    assert needle.cue_image(slot).mean() == needle.cue_image(0).mean()


@pytest.mark.parametrize("colour", range(len(needle.COLOURS)))
def test_every_card_reads_as_its_colour_and_is_no_cue(colour: int) -> None:
    assert needle.read_card(needle.card_image(colour)) == colour
    with pytest.raises(ValueError, match="card"):
        needle.read_cue(needle.card_image(colour))


# ---------------------------------------------------------------------------------------------------
# Reward

NEEDLE_INFO = {"qid": "q", "needle_start": 26.0, "needle_end": 28.0, "duration": 40.0}


def loop_fields(requested: list[float], shown: list[float], answer: str | None) -> dict[str, Any]:
    """What our agent loop's ``Episode.summary`` puts into ``extra_info`` (verl merges it at top level)."""
    return {
        "stop_reason": "answered",
        "predicted_answer": answer,
        "frames_used": len(shown),
        "assistant_turns": 1 + len(requested),
        "invalid_turns": 0,
        "requested_frames": len(requested),
        "requested_timestamps": requested,
        "shown_timestamps": shown,
    }


def test_reward_adds_distance_and_hit_to_the_standard_terms() -> None:
    opening = [5.0, 15.0, 25.0, 35.0]
    info = {**NEEDLE_INFO, **loop_fields([10.0, 26.2], [*opening, 10.0, 26.0], "B"), "num_turns": 5}
    scores = needle.compute_score("needle", "", "B", info)
    assert scores["accuracy"] == 1.0 and scores["format"] == 1.0 and scores["score"] == pytest.approx(1.1)
    assert scores["needle_distance"] == pytest.approx(0.8)
    assert scores["hit_needle"] == 1.0
    assert all(type(value) is float for value in scores.values())


def test_a_request_next_to_the_card_is_near_but_no_hit() -> None:
    scores = needle.compute_score("needle", "", "B", {**NEEDLE_INFO, **loop_fields([28.0], [5.0, 28.0], "C")})
    assert scores["needle_distance"] == pytest.approx(1.0) and scores["hit_needle"] == 0.0
    assert scores["accuracy"] == 0.0


def test_without_requests_the_distance_is_the_video_duration() -> None:
    scores = needle.compute_score("needle", "", "B", {**NEEDLE_INFO, **loop_fields([], [5.0, 15.0], "B")})
    assert scores["needle_distance"] == 40.0 and scores["hit_needle"] == 0.0


def test_distance_counts_a_request_past_the_end_where_the_dialogue_clamped_it() -> None:
    info = {**NEEDLE_INFO, **loop_fields([9000.0], [5.0, 39.9], "C")}
    scores = needle.compute_score("needle", "", "B", info)
    assert scores["needle_distance"] == pytest.approx(40.0 - 27.0)


def test_proximity_grades_where_a_dialogue_looked_and_scores_only_when_weighted() -> None:
    on_card = {**NEEDLE_INFO, **loop_fields([27.0], [5.0, 27.0], "C")}
    one_slot_off = {**NEEDLE_INFO, **loop_fields([21.0], [5.0, 21.0], "C")}
    blind = {**NEEDLE_INFO, **loop_fields([], [5.0], "C")}
    plain = needle.compute_score("needle", "", "B", on_card)
    assert plain["proximity"] == 1.0 and plain["score"] == pytest.approx(0.1)
    weighted = [
        needle.compute_score("needle", "", "B", info, proximity_weight=0.5) for info in (on_card, one_slot_off, blind)
    ]
    assert [scores["proximity"] for scores in weighted] == pytest.approx([1.0, math.exp(-1.0), 0.0])
    assert [scores["score"] for scores in weighted] == pytest.approx([0.6, 0.1 + 0.5 * math.exp(-1.0), 0.1])


def test_proximity_leaves_the_failure_score_of_a_failed_sample() -> None:
    info = {**NEEDLE_INFO, **loop_fields([27.0], [5.0], None), "stop_reason": "video_error"}
    scores = needle.compute_score("needle", "", "B", info, proximity_weight=0.5, failure_score=0.3)
    assert scores["proximity"] == 1.0 and scores["score"] == 0.3


def test_reward_refuses_rows_that_are_not_needle_rows() -> None:
    with pytest.raises(KeyError, match="not a needle row"):
        needle.compute_score("needle", "", "B", loop_fields([], [5.0], "B"))


def test_outcome_stats_separate_reading_from_finding() -> None:
    keys = ("accuracy", "format", "hit_needle", "needle_distance", "frames_used", "requested_frames")
    rows = [
        dict(zip(keys, values, strict=True))
        for values in ((1.0, 1.0, 1.0, 0.0, 5, 1), (0.0, 1.0, 0.0, 9.0, 5, 1), (1.0, 0.0, 0.0, 30.0, 4, 0))
    ]
    stats = needle.outcome_stats(rows)
    assert stats["hit_rate"] == pytest.approx(1 / 3) and stats["accuracy_when_hit"] == 1.0
    assert stats["accuracy_when_missed"] == 0.5 and stats["share_requested"] == pytest.approx(2 / 3)
    assert needle.outcome_stats([])["accuracy"] is None


# ---------------------------------------------------------------------------------------------------
# Cold-start traces


def test_traces_replay_through_the_episode_and_answer_the_card_only_when_shown(
    task: Path, sampler: FrameSampler
) -> None:
    lines = (task / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 3
    infos = {info["qid"]: info for info in extra_infos(task, "train")}
    centres = {needle.slot_centre(slot) for slot in range(needle.NUM_SLOTS)}
    for line in lines:
        record = json.loads(line)
        if "dialogue" in record:  # a single-turn uniform trace: see the uniform test below
            continue
        trace = Trace(VideoQA.from_extra_info(record["extra_info"]), tuple(record["turns"]))
        messages, images = replay(trace, needle.DIALOGUE.dialogue, sampler)
        info = infos[trace.sample.qid]
        requests = len(trace.turns) - 1
        assert 1 <= requests <= 2
        for turn in trace.turns[:-1]:
            request = parse_turn(turn)
            assert isinstance(request, FrameRequest) and len(request.timestamps) == 1
            assert request.timestamps[0] in centres and request.timestamps[0] < info["duration"]
        assert len(images) == needle.DIALOGUE.dialogue.initial_frames + requests
        seen = [needle.read_card(image) for image in images if needle.read_card(image) is not None]
        assert record["card_seen"] == bool(seen)
        final = trace.turns[-1]
        if seen:
            assert OPTION_LETTERS[seen[0]] == info["answer"]
            assert f"<answer>{info['answer']}</answer>" in final
            assert f"The card is {list(needle.COLOURS)[seen[0]]}." in final
        else:
            assert "did not see the card" in final
        assert messages[-1] == {"role": "assistant", "content": final}


def test_reading_videos_show_the_card_at_once_and_their_traces_answer_without_requests(
    tmp_path: Path, sampler: FrameSampler
) -> None:
    rng = random.Random(1)
    for _ in range(200):
        video = needle.draw_video(rng, needle.DIALOGUE.dialogue.initial_frames, hidden=False)
        opening = needle.uniform_frame_times(video.duration, needle.DIALOGUE.dialogue.initial_frames)
        assert any(video.needle.shows(t) for t in opening)
    rows = needle.write_split(tmp_path, "read", 3, rng, needle.DIALOGUE.dialogue.initial_frames, hidden=False)
    infos = [row["extra_info"] for row in rows]
    for record in needle.needle_traces(infos, needle.DIALOGUE):
        trace = Trace(VideoQA.from_extra_info(record["extra_info"]), tuple(record["turns"]))
        _, images = replay(trace, needle.DIALOGUE.dialogue, sampler)
        colours = {needle.read_card(image) for image in images} - {None}
        assert record["card_seen"] and len(trace.turns) == 1 and len(colours) == 1
        assert f"<answer>{OPTION_LETTERS[colours.pop()]}</answer>" in trace.turns[0]


def test_informed_traces_request_the_card_at_once_and_read_it(task: Path, sampler: FrameSampler) -> None:
    infos = extra_infos(task, "train")
    traces = needle.needle_traces(infos, needle.DIALOGUE, informed=True)
    assert len(traces) == len(infos)
    for record, info in zip(traces, infos, strict=True):
        trace = Trace(VideoQA.from_extra_info(record["extra_info"]), tuple(record["turns"]))
        _, images = replay(trace, needle.DIALOGUE.dialogue, sampler)
        request = parse_turn(trace.turns[0])
        assert len(trace.turns) == 2 and isinstance(request, FrameRequest)
        assert request.timestamps == (needle.Needle.from_extra_info(info).time,)
        assert record["card_seen"] and needle.read_card(images[-1]) == OPTION_LETTERS.index(info["answer"])


def test_traces_need_a_dialogue_that_allows_requests() -> None:
    info = {"qid": "q", "video_path": "/nonexistent.mp4", "question": "?", "options": ["a", "b"], "answer": "A"}
    with pytest.raises(ValueError, match="allows frame requests"):
        needle.needle_traces(
            [info], needle.DIALOGUE.with_dialogue(dataclasses.replace(needle.DIALOGUE.dialogue, max_turns=1))
        )


# ---------------------------------------------------------------------------------------------------
# Records and the GPU script


def test_record_extras_must_not_shadow_standard_fields() -> None:
    with pytest.raises(ValueError, match="overwrite"):
        VideoQARecord("q", "v", "/v.mp4", "?", ("a", "b"), 0, None, "s", "train", extras={"answer": 1.0})


def test_gpu_script_overrides_compose_into_the_needle_runs_config(tmp_path: Path) -> None:
    printed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "needle_grpo.sh"), str(tmp_path)],
        env=script_env(PRINT_OVERRIDES="1", STEPS="7"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="sparse_video_grpo", overrides=printed)
    assert cfg.reward.custom_reward_function.path == "pkg://sparse_video_r1.synthetic.needle"
    assert SparseVideoConfig.from_mapping(OmegaConf.to_container(cfg.sparse_video)) == needle.DIALOGUE
    assert "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents
    assert cfg.trainer.total_training_steps == 7 and cfg.trainer.resume_mode == "auto"
    assert cfg.ray_kwargs.ray_init.address == "local"
    assert cfg.actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes == 4 << 30
    assert cfg.actor_rollout_ref.rollout.limit_images == needle.DIALOGUE.dialogue.max_total_frames
    assert cfg.algorithm.rollout_correction.bypass_mode and cfg.algorithm.rollout_correction.rollout_is is None
    # vLLM stays awake (runs side by side failed its sleep check); one pass over each step's batch by default.
    assert cfg.actor_rollout_ref.rollout.free_cache_engine is False and cfg.actor_rollout_ref.actor.ppo_epochs == 1
    # The legacy trainer logs the dialogue metrics (timing_s/dialogue/...) through this manager.
    manager = load_class_from_fqn(cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager")
    assert manager is DialogueMetricsAgentLoopManager and not cfg.trainer.use_v1


@pytest.mark.parametrize("mini_batch,ppo_epochs,updates", [("8", "1", 1), ("1", "1", 8), ("2", "4", 16)])
def test_needle_runs_with_more_updates_a_step_pass_verls_launch_validation(
    tmp_path: Path, mini_batch: str, ppo_epochs: str, updates: int
) -> None:
    """Attempt 5 made one Adam step per GRPO step (135 a run, against 4,608 for the informed SFT that learned the cue):
    the next attempt's knobs must make a config verl launches, with BATCH / MINI_BATCH x PPO_EPOCHS updates a step."""
    from verl.trainer.main_ppo import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    printed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "needle_grpo.sh"), str(tmp_path)],
        env=script_env(PRINT_OVERRIDES="1", MINI_BATCH=mini_batch, PPO_EPOCHS=ppo_epochs),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="sparse_video_grpo", overrides=printed)
    actor = cfg.actor_rollout_ref.actor
    assert cfg.data.train_batch_size // actor.ppo_mini_batch_size * actor.ppo_epochs == updates
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_a_mini_batch_that_does_not_divide_the_batch_is_refused_by_name(tmp_path: Path) -> None:
    """verl's validate_config accepts MINI_BATCH=3 with BATCH=8 (checked); the script refuses it before any work."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "needle_grpo.sh"), str(tmp_path)],
        env=script_env(PRINT_OVERRIDES="1", MINI_BATCH="3"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "MINI_BATCH=3 must divide BATCH=8" in result.stderr


# ---------------------------------------------------------------------------------------------------
# Curves and table (scripts/plot_needle_curves.py)


def _load_plot_script() -> Any:
    spec = importlib.util.spec_from_file_location("plot_needle_curves", ROOT / "scripts" / "plot_needle_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _dump_row(accuracy: float, distance: float, requested: int) -> dict[str, Any]:
    """A line of verl's rollout dump: the reward's fields next to verl's own."""
    return {
        "input": "…", "output": "…", "gts": "A", "score": accuracy + 0.1, "step": 0, "accuracy": accuracy,
        "format": 1.0, "hit_needle": accuracy, "needle_distance": distance, "frames_used": 4.0 + requested,
        "assistant_turns": 1.0 + requested, "requested_frames": float(requested),
    }  # fmt: skip


def test_curves_come_from_rollout_dumps_and_every_metrics_file_of_a_resumed_run(tmp_path: Path) -> None:
    plot = _load_plot_script()
    run = tmp_path / "main"
    step_1 = [_dump_row(0.0, 20.0, 1), _dump_row(1.0, 0.0, 1), _dump_row(0.0, 50.0, 0)]
    _write_jsonl(run / "rollouts" / "1.jsonl", step_1)
    _write_jsonl(run / "rollouts" / "2.jsonl", [_dump_row(1.0, 0.5, 1)])
    val = {"val-aux/needle/accuracy/mean@1": 0.25, "val-aux/needle/needle_distance/mean@1": 12.0}
    _write_jsonl(run / "metrics_a.jsonl", [{"step": 0, "data": val}, {"step": 1, "data": {"timing_s/step": 9.0}}])
    (run / "metrics_a.jsonl").open("a").write('{"step": 2, "data": {"timing')  # killed mid-write
    _write_jsonl(run / "metrics_b.jsonl", [{"step": 1, "data": {"timing_s/step": 4.0}}])  # the resumed call
    plot.main(["--run", f"main={run}", "--run", f"ablation={tmp_path / 'absent'}", "--out", str(tmp_path / "out")])
    curves = json.loads((tmp_path / "out" / "needle_curves.json").read_text())
    assert list(curves) == ["main"]
    step0, step1, step2 = curves["main"]
    assert step0 == {"step": 0, "val_accuracy": 0.25, "val_needle_distance": 12.0}
    assert step1["accuracy"] == pytest.approx(1 / 3) and step1["needle_distance"] == pytest.approx(70 / 3)
    assert step1["needle_distance_requested"] == pytest.approx(10.0)
    assert step1["share_requested"] == pytest.approx(2 / 3)
    assert step1["frames_used"] == pytest.approx(14 / 3) and step1["step_s"] == 4.0
    assert step2["samples"] == 1 and step2["accuracy"] == 1.0 and "step_s" not in step2
    assert Image.open(tmp_path / "out" / "needle_curves.png").size[0] > 0


def test_table_scores_evaluate_records_against_the_needles(task: Path) -> None:
    plot = _load_plot_script()
    infos = extra_infos(task, "val")
    folder = task / "eval_for_table"
    records = []
    for index, info in enumerate(infos):
        card = needle.Needle.from_extra_info(info)
        hit = index % 2 == 0  # every other dialogue requests the card's centre, the rest ask for 1 s
        requested = [card.time] if hit else [1.0]
        records.append(
            {
                "qid": info["qid"], "correct": hit, "stop_reason": "answered", "frames_used": 5,
                "requested_timestamps": requested, "shown_timestamps": [*needle.uniform_frame_times(card.duration, 4),
                *requested],
            }
        )  # fmt: skip
    _write_jsonl(folder / "records_adaptive.jsonl", records)
    uniform = [{**record, "requested_timestamps": [], "shown_timestamps": [], "frames_used": 8} for record in records]
    _write_jsonl(folder / "records_uniform_8.jsonl", uniform)
    out = task / "table_out"
    plot.main(["--val", str(task / "val.parquet"), "--eval", f"rl={folder}", "--out", str(out)])
    adaptive, uniform_8 = json.loads((out / "needle_table.json").read_text())
    hits = sum(1 for index in range(len(infos)) if index % 2 == 0)
    assert adaptive["method"] == "adaptive" and adaptive["samples"] == len(infos)
    assert adaptive["accuracy"] == adaptive["hit_rate"] == pytest.approx(hits / len(infos))
    assert adaptive["accuracy_when_hit"] == 1.0 and adaptive["frames_used"] == 5.0
    far = [abs(1.0 - needle.Needle.from_extra_info(info).time) for index, info in enumerate(infos) if index % 2]
    assert adaptive["needle_distance"] == pytest.approx(sum(far) / len(infos))
    bound = needle.uniform_hit_rate(infos, 8)
    assert uniform_8["perfect_reader_accuracy"] == pytest.approx(bound + (1 - bound) / 5)
    assert uniform_8["share_requested"] == 0.0 and "| rl | uniform_8 |" in (out / "needle_table.md").read_text()


def test_uniform_traces_play_the_baseline_prompt_and_answer_the_card_only_when_shown(task: Path) -> None:
    infos = extra_infos(task, "train")
    traces = needle.needle_traces(infos * 4, needle.DIALOGUE, seed=1, uniform_share=0.5, uniform_frames=(4, 16))
    uniform = [trace for trace in traces if "dialogue" in trace]
    assert 0 < len(uniform) < len(traces)
    sampler = FrameSampler.from_config(needle.DIALOGUE.decoding)
    for record in uniform:
        trace = Trace(VideoQA.from_extra_info(record["extra_info"]), tuple(record["turns"]), record["dialogue"])
        _, images = replay(trace, needle.DIALOGUE.dialogue, sampler)
        assert len(trace.turns) == 1 and len(images) == record["dialogue"]["initial_frames"]
        shows_card = any(needle.read_card(image) is not None for image in images)
        assert shows_card == record["card_seen"]
        if shows_card:
            assert trace.turns[0].endswith(f"<answer>{record['extra_info']['answer']}</answer>")


def test_settling_reports_the_slope_of_the_last_fifth_of_the_steps() -> None:
    plot = _load_plot_script()
    rising = [{"step": step, "accuracy": 0.01 * step + (0.002 if step % 2 else -0.002)} for step in range(50)]
    settled = plot.settling(rising)
    assert (settled["window"], settled["first_step"], settled["last_step"]) == (10, 40, 49)
    assert settled["slope"] == pytest.approx(0.01, abs=1e-3) and not settled["flat"]
    level = [{"step": step, "accuracy": 0.5 + (0.05 if step % 2 else -0.05)} for step in range(50)]
    level[45]["accuracy"] = None  # a step without a dump is skipped, not read as zero
    flat = plot.settling(level)
    assert flat["flat"] and abs(flat["slope"]) <= 2 * flat["slope_se"]
    assert flat["window_mean"] == pytest.approx(0.5, abs=0.02)
    assert plot.settling(level[:2])["flat"] is None  # too few steps to say


def test_seed_table_gives_each_arms_mean_and_sd_over_its_seeds() -> None:
    plot = _load_plot_script()
    table = [
        {"model": name, "method": "adaptive", "accuracy": accuracy, "hit_rate": accuracy, "frames_used": 5.0,
         "assistant_turns": 2.0}
        for name, accuracy in (("main", 0.9), ("main_s1", 0.8), ("main_s2", 0.7), ("ablation", 0.4), ("sft", 0.2))
    ]  # fmt: skip
    rows = {(row["arm"], row["method"]): row for row in plot.seed_table(table)}
    main = rows[("main", "adaptive")]
    assert main["seeds"] == [0, 1, 2] and main["accuracy"] == pytest.approx(0.8)
    assert main["accuracy_sd"] == pytest.approx(0.1) and main["frames_used_sd"] == 0.0
    assert rows[("ablation", "adaptive")]["accuracy_sd"] is None  # one seed: no spread to report
    assert plot.arm_of("ablation_s12") == ("ablation", 12) and plot.arm_of("sft") == ("sft", 0)
    assert "0.800 ± 0.100" in plot.seed_markdown(plot.seed_table(table))
