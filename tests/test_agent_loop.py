"""The verl agent loop on CPU: real tiny Qwen2.5-VL tokenizer/processor, real videos, real verl classes.

Generation comes from a scripted policy (texts encoded with the tiny model's tokenizer) for exact
multi-turn paths, and from the tiny model itself through the transformers-backed server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tokenizer import hf_processor, hf_tokenizer

from sparse_video_r1.env.config import SparseVideoConfig
from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.serving.hf_server import ScriptedServer, TransformersServer
from sparse_video_r1.synthetic.videos import read_frame_index
from sparse_video_r1.training.agent_loop import SparseVideoAgentLoop
from sparse_video_r1.training.standalone import to_training_batch

FPS = 10.0
OPTIONS = ["red", "green", "blue", "yellow", "black"]
REQUEST = "<think>I need the middle.</think><frames>2.0, 3.55</frames>"
ANSWER = "<think>Seen enough.</think><answer>C</answer>"


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path):
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


def trainer_config(model_dir: Path, *, prompt_length: int = 1024, response_length: int = 1024, **dialogue: Any):
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": prompt_length, "response_length": response_length},
                "model": {"path": str(model_dir)},
            },
            "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
            "sparse_video": sparse_video(
                **{"initial_frames": 2, "max_frames_per_request": 2, "max_total_frames": 6, **dialogue}
            ),
        }
    )


def sparse_video(**flat: Any) -> dict[str, dict[str, Any]]:
    """The ``sparse_video`` mapping with each flat field put in its section (tests name fields, not sections)."""
    sections = SparseVideoConfig().__dataclass_fields__
    nested: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for key, value in flat.items():
        (section,) = [name for name, spec in sections.items() if key in spec.default_factory.__dataclass_fields__]
        nested[section][key] = value
    return nested


def make_loop(model_dir: Path, tokenizer_and_processor, server, **config: Any) -> SparseVideoAgentLoop:
    tokenizer, processor = tokenizer_and_processor
    cfg = trainer_config(model_dir, **config)
    return SparseVideoAgentLoop(
        trainer_config=DictConfigWrap(cfg),
        server_manager=server,
        tokenizer=tokenizer,
        processor=processor,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(cfg.data),
        hf_model_type="qwen2_5_vl",
    )


def row(video: Path, qid: str = "v_0") -> dict[str, Any]:
    extra_info = {"qid": qid, "video_path": str(video), "question": "What colour?", "options": OPTIONS, "answer": "C"}
    return {"raw_prompt": [{"role": "user", "content": "What colour?"}], "extra_info": extra_info}


def run_loop(loop: SparseVideoAgentLoop, rows: list[dict[str, Any]]) -> list[AgentLoopOutput]:
    async def all_samples():
        return await asyncio.gather(*(loop.run({"temperature": 1.0, "logprobs": True}, **r) for r in rows))

    # verl's AgentLoopBase binds the event loop current at construction; run on that one, as its workers do.
    return loop.loop.run_until_complete(all_samples())


def model_turns(tokenizer, output: AgentLoopOutput) -> list[str]:
    """The response tokens with mask 1, split into contiguous runs and decoded: the assistant turns."""
    turns, current = [], []
    for token, mask in zip(output.response_ids, output.response_mask, strict=True):
        if mask:
            current.append(token)
        elif current:
            turns.append(tokenizer.decode(current, skip_special_tokens=True))
            current = []
    if current:
        turns.append(tokenizer.decode(current, skip_special_tokens=True))
    return turns


def image_pad_runs(tokenizer, ids: list[int]) -> int:
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return sum(1 for i, token in enumerate(ids) if token == pad and (i == 0 or ids[i - 1] != pad))


def test_request_then_answer_trains_every_assistant_turn_on_the_frames_it_saw(
    tiny_model_dir, tokenizer_and_processor, make_video
):
    tokenizer, _ = tokenizer_and_processor
    video = make_video(num_frames=60, fps=FPS)
    server = ScriptedServer(tokenizer, [REQUEST, ANSWER])
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server)
    outputs = run_loop(loop, [row(video, f"v_{i}") for i in range(3)])

    for output in outputs:
        fields = output.extra_fields
        assert fields["stop_reason"] == StopReason.ANSWERED.value
        assert fields["predicted_answer"] == "C"
        assert fields["assistant_turns"] == 2
        assert fields["frames_used"] == 4
        assert model_turns(tokenizer, output) == [REQUEST, ANSWER]
        assert output.num_turns == 4  # first user turn, request, frames, answer
        assert len(output.response_logprobs) == len(output.response_ids)
        images = output.multi_modal_data["images"]
        assert [read_frame_index(image) for image in images] == [15, 45, 20, 35]  # uniform 1.5s/4.5s, then 2.0s, 3.55s
        assert image_pad_runs(tokenizer, output.prompt_ids) == 2
        assert image_pad_runs(tokenizer, output.response_ids) == 2
    # Each second generation saw the first turn's tokens and the two new frames.
    assert sorted(image_pad_runs(tokenizer, prompt) for prompt in server.prompts) == [2, 2, 2, 4, 4, 4]
    second_prompt = max(server.prompts, key=len)
    assert tokenizer.decode(second_prompt, skip_special_tokens=True).count("Frame at 3.5s") == 1


@pytest.mark.parametrize(
    ("script", "config", "reason", "turns"),
    [
        ([REQUEST] * 3, {"max_turns": 3, "max_total_frames": 12}, StopReason.MAX_TURNS, 3),
        (["I think it is C."], {}, StopReason.INVALID_TURN, 1),
        (["<think>" + "very long thoughts " * 80], {"max_tokens_per_turn": 32}, StopReason.TRUNCATED, 1),
        ([REQUEST, ANSWER], {"response_length": 96}, StopReason.CONTEXT_LIMIT, 1),
    ],
)
def test_each_way_a_dialogue_ends_is_recorded(
    tiny_model_dir, tokenizer_and_processor, make_video, script, config, reason, turns
):
    tokenizer, _ = tokenizer_and_processor
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, script), **config)
    (output,) = run_loop(loop, [row(make_video(num_frames=60, fps=FPS))])
    assert output.extra_fields["stop_reason"] == reason.value
    assert output.extra_fields["assistant_turns"] == turns
    assert len(output.response_ids) == len(output.response_mask) <= loop.response_length
    images = output.multi_modal_data["images"]
    assert image_pad_runs(tokenizer, output.prompt_ids + output.response_ids) == len(images)


def test_budget_rules_clamp_drop_repeats_and_cap_frames(tiny_model_dir, tokenizer_and_processor, make_video):
    tokenizer, _ = tokenizer_and_processor
    script = ["<think>.</think><frames>-3, 1.5, 99, 4.2, 5.0</frames>", ANSWER]
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, script))
    (output,) = run_loop(loop, [row(make_video(num_frames=60, fps=FPS))])
    fields = output.extra_fields
    assert fields["clamped_timestamps"] == 2
    assert fields["repeated_timestamps"] == 1  # 1.5s is an initial frame
    assert fields["over_budget_timestamps"] == 2  # 4 new frames asked, 2 allowed per request
    assert [read_frame_index(image) for image in output.multi_modal_data["images"]] == [15, 45, 0, 42]


def test_a_missing_video_ends_only_that_sample_with_a_gradient_free_output(
    tiny_model_dir, tokenizer_and_processor, make_video, tmp_path
):
    tokenizer, _ = tokenizer_and_processor
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, [REQUEST, ANSWER]))
    good, missing = run_loop(loop, [row(make_video(num_frames=60, fps=FPS)), row(tmp_path / "nope.mp4", "gone")])
    assert good.extra_fields["stop_reason"] == StopReason.ANSWERED.value
    assert missing.extra_fields["stop_reason"] == StopReason.VIDEO_ERROR.value
    assert missing.extra_fields["frames_used"] == 0
    assert sum(missing.response_mask) == 0
    assert len(missing.multi_modal_data["images"]) == 1 == image_pad_runs(tokenizer, missing.prompt_ids)


def test_outputs_pass_through_verls_postprocessing_with_consistent_shapes(
    tiny_model_dir, tokenizer_and_processor, make_video, tmp_path
):
    tokenizer, processor = tokenizer_and_processor
    script = {0: [REQUEST, ANSWER], 1: [ANSWER], 2: [REQUEST, REQUEST, ANSWER]}
    rows = [row(make_video(num_frames=60, fps=FPS), f"v_{i}") for i in range(3)] + [row(tmp_path / "x.mp4", "bad")]

    scripts_by_request: dict[str, list[str]] = {}

    def policy(prompt_ids: list[int], turn: int, request_id: str) -> str:
        if request_id not in scripts_by_request:
            scripts_by_request[request_id] = script[len(scripts_by_request)]
        return scripts_by_request[request_id][turn]

    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, policy))
    outputs = run_loop(loop, rows)
    internal, batch = to_training_batch(outputs, tokenizer, processor, 1024, 1024)

    assert batch.batch["input_ids"].shape == (4, 2048)
    assert batch.batch["position_ids"].shape == (4, 4, 2048)  # text positions + 3 mRoPE axes
    assert batch.batch["response_mask"].shape == (4, 1024)
    assert list(batch.non_tensor_batch["stop_reason"]) == ["answered"] * 3 + ["video_error"]
    for output, sample in zip(outputs, internal, strict=True):
        inputs = sample.multi_modal_inputs
        images = output.multi_modal_data["images"]
        assert inputs["image_grid_thw"].shape[0] == len(images)
        merged_tokens = int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4
        assert merged_tokens == int((sample.input_ids == processor.image_token_id).sum())
        assert inputs["pixel_values"].shape[0] == int(inputs["image_grid_thw"].prod(dim=1).sum())
        # Every model token is inside the attention mask; environment tokens are masked out of the loss.
        assert torch.all(sample.attention_mask[0, 1024:][sample.response_mask[0].bool()] == 1)


def test_the_tiny_model_itself_drives_the_loop_through_the_transformers_server(
    tiny_model_dir, tokenizer_and_processor, make_video
):
    server = TransformersServer(tiny_model_dir, seed=0)
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server, max_tokens_per_turn=24)
    outputs = run_loop(loop, [row(make_video(num_frames=60, fps=FPS), f"v_{i}") for i in range(2)])
    for output in outputs:
        # A random model rarely follows the protocol: the dialogue ends, recorded, after its first turn.
        assert output.extra_fields["stop_reason"] in {"invalid_turn", "truncated", "answered", "max_turns"}
        assert 1 <= sum(output.response_mask) <= 24
        assert output.response_logprobs is not None and len(output.response_logprobs) == len(output.response_ids)


def test_last_turn_only_ablation_masks_every_turn_but_the_final_answer(
    tiny_model_dir, tokenizer_and_processor, make_video
):
    tokenizer, _ = tokenizer_and_processor
    server = ScriptedServer(tokenizer, [REQUEST, ANSWER])
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server, loss_on="last_turn")
    (output,) = run_loop(loop, [row(make_video(num_frames=60, fps=FPS))])
    assert output.extra_fields["assistant_turns"] == 2
    assert model_turns(tokenizer, output) == [ANSWER]


def test_outputs_carry_the_weights_versions_verls_v1_trainer_reads(
    tiny_model_dir, tokenizer_and_processor, make_video, tmp_path
):
    """verl's v1 trainer builds ``np.array([tag["min_global_steps"] ...], dtype=int)`` over every sample."""
    tokenizer, _ = tokenizer_and_processor
    server = ScriptedServer(tokenizer, [])

    def policy(prompt_ids: list[int], turn: int, request_id: str) -> str:
        server.global_steps = 3 + turn  # a weight update lands between the two turns
        return [REQUEST, ANSWER][turn]

    server.policy = policy
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server)
    rows = [row(make_video(num_frames=60, fps=FPS)), row(tmp_path / "nope.mp4", "gone")]

    async def both():
        return await asyncio.gather(*(loop.run({"temperature": 1.0}, global_steps=5, **r) for r in rows))

    played, failed = loop.loop.run_until_complete(both())
    assert (played.extra_fields["min_global_steps"], played.extra_fields["max_global_steps"]) == (3, 4)
    # Never reached the model: the version the sync trainer's step 5 rolls out with (synced after step 4).
    assert (failed.extra_fields["min_global_steps"], failed.extra_fields["max_global_steps"]) == (4, 4)
    tags = [output.extra_fields for output in (played, failed)]
    assert np.array([tag["min_global_steps"] for tag in tags], dtype=int).tolist() == [3, 4]


@pytest.mark.parametrize("special", ["<|image_pad|>", "<|vision_start|>", "<|video_pad|>"])
def test_a_turn_that_writes_vision_tokens_is_cut_before_them_and_ends_invalid(
    tiny_model_dir, tokenizer_and_processor, make_video, special
):
    """A policy forced to emit vision special tokens never desynchronises image tokens from images."""
    tokenizer, processor = tokenizer_and_processor
    forced = f"<think>look</think>{special}{special}<frames>1.0</frames>"
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, [REQUEST, forced]))
    (output,) = run_loop(loop, [row(make_video(num_frames=60, fps=FPS))])
    fields = output.extra_fields
    assert fields["stop_reason"] == StopReason.INVALID_TURN.value
    assert fields["invalid_reason"] == "vision_tokens"
    assert fields["assistant_turns"] == 2
    # Both forced tokens, the request text after them and the end-of-turn token are removed.
    removed = len(tokenizer.encode(f"{special}{special}<frames>1.0</frames>", add_special_tokens=False)) + 1
    assert fields["vision_tokens_removed"] == removed
    assert model_turns(tokenizer, output) == [REQUEST, "<think>look</think>"]
    images = output.multi_modal_data["images"]
    assert image_pad_runs(tokenizer, output.prompt_ids + output.response_ids) == len(images) == 4
    # verl's own post-processing re-runs the processor on the decoded ids: features match placeholders.
    internal, _ = to_training_batch([output], tokenizer, processor, 1024, 1024)
    inputs = internal[0].multi_modal_inputs
    assert int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4 == int(
        (internal[0].input_ids == processor.image_token_id).sum()
    )
