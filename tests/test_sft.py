"""Cold-start SFT: traces replay through the real environment and only assistant tokens are trained."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoProcessor

from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig
from sparse_video_r1.env.dialogue import VideoQA
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.synthetic.videos import read_frame_index
from sparse_video_r1.training.sft import (
    IGNORE_INDEX,
    SFTConfig,
    Trace,
    encode_dialogue,
    read_traces,
    replay,
    synthetic_traces,
    train,
)

CONFIG = DialogueRules(initial_frames=2, max_frames_per_request=2, max_total_frames=6, max_turns=3)
SETTINGS = SparseVideoConfig(CONFIG)
OPTIONS = ("red", "green", "blue", "yellow", "black")
TURNS = ("<think>look</think><frames>1.0, 4.05</frames>", "<think>done</think><answer>B</answer>")


@pytest.fixture(scope="module")
def sample(make_video) -> VideoQA:
    return VideoQA(str(make_video(num_frames=60, fps=10.0)), "What colour?", OPTIONS, "B", "q0")


def test_replay_shows_the_requested_frames_between_the_turns(sample: VideoQA):
    messages, images = replay(Trace(sample, TURNS), CONFIG, FrameSampler.from_config(SETTINGS.decoding))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [read_frame_index(image) for image in images] == [15, 45, 10, 40]


def test_labels_cover_exactly_the_assistant_turns(sample: VideoQA, tiny_model_dir: Path):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages, images = replay(Trace(sample, TURNS), CONFIG, FrameSampler.from_config(SETTINGS.decoding))
    batch = encode_dialogue(processor, messages, images)
    labels = batch["labels"][0]
    trained = labels[labels != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(trained, skip_special_tokens=False) == "<|im_end|>".join(TURNS) + "<|im_end|>"
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())


def test_a_trace_that_does_not_fit_the_dialogue_rules_is_rejected_by_qid(sample: VideoQA):
    too_long = Trace(sample, (TURNS[0], TURNS[0], TURNS[0], TURNS[1]))
    with pytest.raises(ValueError, match="q0"):
        replay(too_long, CONFIG, FrameSampler.from_config(SETTINGS.decoding))


def test_synthetic_traces_follow_the_protocol_and_end_with_the_right_answer(sample: VideoQA, tmp_path: Path):
    traces = synthetic_traces([sample] * 50, [6.0] * 50, CONFIG, seed=3, request_probability=0.7)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    sampler = FrameSampler.from_config(SETTINGS.decoding)
    requested = 0
    for trace in read_traces(path):
        assert trace.turns[-1].endswith("<answer>B</answer>")
        replay(trace, CONFIG, sampler)
        requested += len(trace.turns) > 1
    assert 20 < requested < 50


def test_uniform_traces_replay_as_the_single_turn_baseline_prompt(sample: VideoQA, tmp_path: Path):
    traces = synthetic_traces([sample] * 40, [6.0] * 40, CONFIG, seed=5, uniform_share=0.5, uniform_frames=(2, 3))
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    sampler = FrameSampler.from_config(SETTINGS.decoding)
    shown = Counter()
    for trace in read_traces(path):
        if not trace.dialogue:
            continue
        assert trace.turns == ("<think>I have seen enough.</think><answer>B</answer>",)
        messages, images = replay(trace, CONFIG, sampler)
        assert "request" not in messages[0]["content"].lower()
        shown[len(images)] += 1
    assert set(shown) == {2, 3}
    assert 10 < sum(shown.values()) < 30


def test_a_trace_overriding_an_unknown_dialogue_field_is_named(sample: VideoQA, tmp_path: Path):
    path = tmp_path / "traces.jsonl"
    trace = {"extra_info": synthetic_traces([sample], [6.0], CONFIG)[0]["extra_info"], "turns": ["x"]}
    path.write_text(json.dumps({**trace, "dialogue": {"initial_frame": 2}}) + "\n")
    with pytest.raises(ValueError, match=r"traces\.jsonl:1.*initial_frame"):
        read_traces(path)


def test_bad_trace_lines_are_named_by_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": []}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_traces(path)


def test_a_short_cpu_run_lowers_the_loss_and_saves_a_loadable_checkpoint(sample, tiny_model_dir, tmp_path):
    traces = synthetic_traces([sample] * 6, [6.0] * 6, CONFIG, seed=0)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    out = tmp_path / "ckpt"
    metrics = train(SFTConfig(str(tiny_model_dir), str(path), str(out), epochs=3, lr=1e-3, device="cpu"), SETTINGS)
    assert metrics["last_epoch_loss"] < metrics["first_epoch_loss"]
    assert json.loads((out / "sft_metrics.json").read_text())["examples"] == 6
    AutoProcessor.from_pretrained(out)
    assert metrics["epochs_done"] == 3 and not metrics["stopped_by_time_budget"]


def test_a_time_budget_stops_training_after_the_step_that_spends_it(sample, tiny_model_dir, tmp_path):
    traces = synthetic_traces([sample] * 4, [6.0] * 4, CONFIG, seed=0)
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    config = SFTConfig(str(tiny_model_dir), str(path), str(tmp_path / "ckpt"), epochs=5, device="cpu", time_budget_s=0)
    metrics = train(config, SETTINGS)
    assert metrics["stopped_by_time_budget"] and metrics["epochs_done"] == 0.25  # one dialogue of four
    assert metrics["first_epoch_loss"] == metrics["last_epoch_loss"]
