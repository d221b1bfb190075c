"""The ``dialogue/…`` step metrics through verl's own metric path, on CPU.

Dialogues come from the real agent loop (tiny Qwen2.5-VL tokenizer/processor, real videos, a scripted policy
chosen by the question in the prompt), are scored by verl's reward loop (``AgentLoopWorker._compute_score`` →
``NaiveRewardManager`` → our ``compute_score``), and reach the tracker through verl's code: for the v1 trainer
``AgentLoopWorkerTQ._agent_loop_postprocess`` into TransferQueue, the replay buffer that
``PPOTrainer._build_replay_buffer`` loads from the training config, ``MetricsAggregator`` and ``Tracking``
(console, TensorBoard, file); for the legacy trainer ``AgentLoopWorker._postprocess`` and
``compute_timing_metrics``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
from verl.trainer.ppo.metric_utils import compute_timing_metrics
from verl.utils.tokenizer import hf_processor, hf_tokenizer

from sparse_video_r1.env import protocol
from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.env.protocol import OPTION_LETTERS
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.training import rollout_dump
from sparse_video_r1.training.dialogue_metrics import dialogue_metrics, dialogue_record
from sparse_video_r1.training.standalone import make_agent_loop

FPS = 10.0
OPTIONS = ["red", "green", "blue", "yellow", "black"]
TRUTH = "C"
ANSWER_RIGHT = "<think>Seen enough.</think><answer>C</answer>"
ANSWER_WRONG = "<think>Guess.</think><answer>B</answer>"
#: question -> (NExT-QA type code, the policy's turns; None: the row's video is missing).
SCENARIOS: dict[str, tuple[str, list[str] | None]] = {
    "why request the middle": ("CW", ["<think>Middle.</think><frames>2.0, 3.55</frames>", ANSWER_RIGHT]),
    "when answer at once": ("TN", [ANSWER_WRONG]),
    "what outside the video": ("DC", ["<think>Edges.</think><frames>99, -1</frames>", ANSWER_RIGHT]),
    "when say nothing useful": ("TC", ["hello there"]),
    "how missing video": ("CH", None),
}


def _row(question: str, video: Path, index: int) -> dict[str, Any]:
    qtype, _ = SCENARIOS[question]
    extra_info = {
        "qid": f"q{index}",
        "video_path": str(video),
        "question": question,
        "options": OPTIONS,
        "answer": TRUTH,
        "question_type": qtype,
    }
    return {
        "raw_prompt": [{"role": "user", "content": question}],
        "extra_info": extra_info,
        "data_source": "nextqa",
        "reward_model": {"ground_truth": TRUTH, "style": "rule"},
    }


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path):
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def rows(make_video, tmp_path_factory) -> list[dict[str, Any]]:
    video = make_video(num_frames=60, fps=FPS)
    missing = tmp_path_factory.mktemp("missing") / "gone.mp4"
    return [
        _row(question, video if turns is not None else missing, i)
        for i, (question, (_, turns)) in enumerate(SCENARIOS.items())
    ]


@pytest.fixture(scope="module")
def agent_loop(tiny_model_dir, tokenizer_and_processor):
    from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig

    tokenizer, _ = tokenizer_and_processor

    def policy(prompt_ids: list[int], turn: int, request_id: str) -> str:
        prompt = tokenizer.decode(prompt_ids)
        (turns,) = [turns for question, (_, turns) in SCENARIOS.items() if question in prompt]
        return turns[turn]

    dialogue = SparseVideoConfig(
        DialogueRules(initial_frames=2, max_frames_per_request=2, max_total_frames=6, max_turns=3)
    )
    return make_agent_loop(
        tiny_model_dir, ScriptedServer(tokenizer, policy), dialogue, prompt_length=1024, response_length=1024
    )


@pytest.fixture(scope="module")
def training_config(tiny_model_dir):
    """The composed training config (our YAML and the template's overrides), sized for the tiny model."""
    from test_launch_config import compose_training_config, template_overrides

    overrides = template_overrides(
        "actor_rollout_ref.rollout.prompt_length=1024",
        "actor_rollout_ref.rollout.response_length=1024",
        "trainer.project_name=svr1_test",
        "trainer.experiment_name=metrics",
        MODEL_PATH=str(tiny_model_dir),
        ROLLOUT_DATA_DIR="",
    )
    return compose_training_config(overrides)


def _expected(outputs, rows) -> dict[str, float]:
    """The metrics recomputed here from the loop's own fields and the scripted scenarios."""
    fields = [output.extra_fields for output in outputs]
    frames = [f["frames_used"] for f in fields]
    expected = {
        "dialogue/frames_shown/mean": statistics.fmean(frames),
        "dialogue/frames_shown/min": min(frames),
        "dialogue/frames_shown/max": max(frames),
        "dialogue/frames_shown/p50": statistics.median(frames),
        "dialogue/assistant_turns/max": max(f["assistant_turns"] for f in fields),
        "dialogue/clamped_timestamps/mean": statistics.fmean(f["clamped_timestamps"] for f in fields),
        "dialogue/env_seconds/mean": statistics.fmean(f["env_seconds"] for f in fields),
    }
    scripted = [SCENARIOS[row["extra_info"]["question"]][1] for row in rows]
    requested = [turns is not None and "<frames>" in turns[0] for turns in scripted]
    expected["dialogue/request_share"] = statistics.fmean(requested)
    played = [turn for turns in scripted if turns is not None for turn in turns]
    parsed = [not isinstance(protocol.parse_turn(turn, num_options=len(OPTIONS)), protocol.Invalid) for turn in played]
    expected["dialogue/parseable_turn_share"] = statistics.fmean(parsed)
    correct = [turns is not None and turns[-1] == ANSWER_RIGHT for turns in scripted]
    expected["dialogue/accuracy/mean"] = statistics.fmean(correct)
    groups = {"Causal": ("CW", "CH"), "Temporal": ("TN", "TC"), "Descriptive": ("DC",)}
    for group, codes in groups.items():
        members = [c for c, row in zip(correct, rows, strict=True) if row["extra_info"]["question_type"] in codes]
        expected[f"dialogue/accuracy/{group}"] = statistics.fmean(members)
    return expected


def _score(agent_loop, outputs, rows, training_config):
    """Each output scored as verl's agent-loop worker does, through verl's reward loop and our reward."""
    from sparse_video_r1.training.cpu_step import scoring_worker

    worker = scoring_worker(training_config, agent_loop.tokenizer, agent_loop.processor)
    for output, row in zip(outputs, rows, strict=True):
        worker.loop.run_until_complete(worker._compute_score([output], kwargs=row))
    return worker


@pytest.fixture(scope="module")
def outputs(agent_loop, rows):
    from sparse_video_r1.training.cpu_step import run_groups

    return [group[0] for group in run_groups(agent_loop, rows, 1, {"temperature": 1.0, "logprobs": True})]


def test_dialogue_metrics_of_scored_loop_outputs(agent_loop, outputs, rows, training_config):
    _score(agent_loop, outputs, rows, training_config)
    records = [
        dialogue_record(o.extra_fields, o.extra_fields["reward_extra_info"], row["extra_info"])
        for o, row in zip(outputs, rows, strict=True)
    ]
    metrics = dialogue_metrics(records)
    for key, value in _expected(outputs, rows).items():
        assert metrics[key] == pytest.approx(value), key
    stops = [o.extra_fields["stop_reason"] for o in outputs]
    for reason in StopReason:
        assert metrics[f"dialogue/stop/{reason.value}"] == pytest.approx(stops.count(reason.value) / len(stops))
    assert {"answered", "invalid_turn", "video_error"} <= set(stops)
    # "99, -1" lands on the video's two ends; "2.0, 3.55" a second or more from the two opening frames.
    distances = [d for o in outputs for d in o.extra_fields["request_distances"]]
    assert len(distances) == 4 and all(d > 0 for d in distances)
    assert metrics["dialogue/request_distance_s/max"] == pytest.approx(max(distances))
    assert metrics["dialogue/score/mean"] == pytest.approx(
        statistics.fmean(o.extra_fields["reward_extra_info"]["score"] for o in outputs)
    )


def test_no_loop_fields_no_metrics():
    assert dialogue_metrics([dialogue_record({"frames_used": 3}, {"accuracy": 1.0}, {})]) == {}


@pytest.fixture(scope="module")
def transfer_queue():
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init()
    yield tq
    tq.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def v1_run(agent_loop, outputs, rows, training_config, transfer_queue, tmp_path_factory):
    """Two training steps of the scripted dialogues through verl's v1 post-generation path."""
    from omegaconf import OmegaConf

    from sparse_video_r1.training.cpu_step import CpuStepRunner
    from sparse_video_r1.training.verl_metrics import DialogueMetricsReplayBuffer

    run = tmp_path_factory.mktemp("v1_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TENSORBOARD_DIR", str(run / "tensorboard"))
        env.setenv("VERL_FILE_LOGGER_PATH", str(run / "metrics.jsonl"))
        config = OmegaConf.merge(training_config, {"trainer": {"rollout_data_dir": str(run / "rollouts")}})
        runner = CpuStepRunner(
            config, agent_loop.tokenizer, agent_loop.processor, backends=["console", "tensorboard", "file"]
        )
        assert isinstance(runner.replay_buffer, DialogueMetricsReplayBuffer), "the YAML must name our replay buffer"
        logged = {}
        for step in (1, 2):
            for i, (row, output) in enumerate(zip(rows, outputs, strict=True)):
                runner.put_group(f"s{step}p{i}", row, [output.model_copy(deep=True)], step)
            logged[step] = runner.finish_step(step, prompts=len(rows))
        runner.close()
    return run, logged


def test_v1_trainer_path_logs_dialogue_metrics_to_console_tensorboard_and_file(v1_run, outputs, rows):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, logged = v1_run
    expected = _expected(outputs, rows)
    for key, value in expected.items():
        assert logged[2][key] == pytest.approx(value), key

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key, value in expected.items():
        points = events.Scalars(key)
        assert [p.step for p in points] == [1, 2]
        assert points[-1].value == pytest.approx(value, rel=1e-5), key
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["data"]["dialogue/request_share"] == pytest.approx(expected["dialogue/request_share"])


def test_v1_dialogue_records_join_verls_rollout_dump(v1_run, rows):
    run, _ = v1_run
    verl_dump = rollout_dump.read_jsonl(run / "rollouts" / "2.jsonl")
    assert len(verl_dump) == len(rows) and all("uid" in row and "output" in row for row in verl_dump)
    records = rollout_dump.read_step(run / "rollouts", 2)
    assert len(records) == len(rows)
    by_question = {record["question"]: record for record in records}
    request = by_question["why request the middle"]
    assert [t["speaker"] for t in request["turns"]] == ["model", "environment", "model"]
    assert request["turns"][1]["frames"] == 2 and request["turns"][2]["text"] == ANSWER_RIGHT
    assert request["score"] == pytest.approx(request["verl_score"])  # verl stores rm_scores as float32
    assert by_question["how missing video"]["stop_reason"] == "video_error"


def test_curves_read_tensorboard_and_file_logger_alike_and_draw(v1_run, outputs, rows):
    from sparse_video_r1.tools import curves

    run, _ = v1_run
    from_events = curves.read_run(run / "tensorboard")
    from_lines = curves.read_run(run / "metrics.jsonl")
    assert sorted(from_events) == sorted(from_lines) == [1, 2]
    for key, value in _expected(outputs, rows).items():
        assert from_events[2][key] == pytest.approx(value, rel=1e-5)
        assert from_lines[2][key] == pytest.approx(value)
    png = curves.plot_curves(from_events, run / "curves.png", smooth=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves.main([str(run), "--out", str(run / "cli.png")])  # the run folder: finds the event files below it
    assert (run / "cli.png").read_bytes()[:8] == png.read_bytes()[:8]


def test_viewer_renders_a_training_step_with_its_frames_decoded_again(v1_run, outputs):
    from sparse_video_r1.tools import viewer

    run, _ = v1_run
    page = viewer.render_rollouts(run / "rollouts", None, run / "step.html", limit=10, max_pixels=3136)
    text = page.read_text()
    assert "Training rollouts, step 2" in text and "why request the middle" in text
    shown = sum(len(o.extra_fields["shown_timestamps"]) for o in outputs)
    assert text.count('<img alt="frame at') == shown
    for record in rollout_dump.read_step(run / "rollouts", 2):
        assert f"reward {record['score']:.3f}" in text
    viewer.main(["rollouts", str(run / "rollouts"), "--step", "1"])
    assert "Training rollouts, step 1" in (run / "rollouts" / "step_1.html").read_text()


def _legacy_samples(agent_loop, outputs, rows, training_config):
    """The scoring worker and each output through the legacy worker's own per-sample post-processing."""
    worker = _score(agent_loop, outputs, rows, training_config)
    samples = [
        worker.loop.run_until_complete(AgentLoopWorker._agent_loop_postprocess(worker, o, validate=False, **row))
        for o, row in zip(outputs, rows, strict=True)
    ]
    return worker, samples


def test_legacy_trainer_path_reports_dialogue_metrics_as_timing_of_generation(
    agent_loop, outputs, rows, training_config, tmp_path
):
    from sparse_video_r1.training.verl_metrics import DialogueStepReport, legacy_step_metrics

    worker, samples = _legacy_samples(agent_loop, outputs, rows, training_config)
    output = AgentLoopWorker._postprocess(worker, samples, input_non_tensor_batch=None)
    prompts = type(output)(
        non_tensor_batch={
            "extra_info": np.array([row["extra_info"] for row in rows], dtype=object),
            "uid": np.array([f"p{i}" for i in range(len(rows))], dtype=object),
        },
        meta_info={"global_steps": 7},
    )
    report = DialogueStepReport(str(tmp_path), agent_loop.tokenizer.name_or_path)
    timing_raw = {"gen": 1.0, **legacy_step_metrics(report, output, prompts)}
    metrics = compute_timing_metrics(output, timing_raw)
    for key, value in _expected(outputs, rows).items():
        assert metrics[f"timing_s/{key}"] == pytest.approx(value), key
    (written,) = rollout_dump.steps(tmp_path)
    assert written == 7
    assert {r["answer"] for r in rollout_dump.read_step(tmp_path, 7)} == {OPTION_LETTERS[2]}


def test_legacy_manager_adds_the_metrics_to_training_batches_only(
    agent_loop, outputs, rows, training_config, monkeypatch
):
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager

    from sparse_video_r1.training.verl_metrics import DialogueMetricsAgentLoopManager, DialogueStepReport

    worker, samples = _legacy_samples(agent_loop, outputs, rows, training_config)

    def generated(self, prompts):  # verl's manager after its workers: the batch and its timing
        batch = AgentLoopWorker._postprocess(worker, samples, input_non_tensor_batch=None)
        batch.meta_info = {"timing": {"agent_loop/generate_sequences/mean": 0.1}}
        return batch

    monkeypatch.setattr(AgentLoopManager, "generate_sequences", generated)
    manager = object.__new__(DialogueMetricsAgentLoopManager)  # no Ray workers: only generate_sequences is driven
    manager.report = DialogueStepReport()
    infos = np.array([row["extra_info"] for row in rows], dtype=object)
    train = manager.generate_sequences(DataProto(non_tensor_batch={"extra_info": infos}, meta_info={"global_steps": 3}))
    validation = manager.generate_sequences(
        DataProto(non_tensor_batch={"extra_info": infos}, meta_info={"validate": True, "global_steps": 3})
    )
    expected = _expected(outputs, rows)
    assert {key: train.meta_info["timing"][key] for key in expected} == pytest.approx(expected)
    assert "agent_loop/generate_sequences/mean" in train.meta_info["timing"]
    assert not any(key.startswith("dialogue/") for key in validation.meta_info["timing"])
