"""The longest dialogue the training template allows, on CPU: 16 frames, 4 turns, thoughts at the per-turn cap.

The dialogue and sequence settings are not restated here: they are composed from
``scripts/run_qwen2_5_vl_template.sh``'s own overrides (initial_frames 4, max_frames_per_request 4,
max_total_frames 16, max_turns 4, min/max_pixels 12544/100352, max_tokens_per_turn 512, prompt_length 1536,
response_length 4096). The video is 896x448, so every frame reaches the 100352-pixel cap exactly: 448x224,
128 visual tokens (a 4:3 640x480 frame stops at 364x252, 117 tokens). The agent loop, tokenizer, processor,
frame sampler and verl's post-processing are the real ones; only the model's turns are scripted.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from test_agent_loop import image_pad_runs, make_loop, model_turns, run_loop
from test_launch_config import compose_training_config, template_overrides
from verl.utils.tokenizer import hf_processor, hf_tokenizer

from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.synthetic.videos import read_frame_index
from sparse_video_r1.training.standalone import to_training_batch

WIDTH, HEIGHT, FPS, NUM_FRAMES = 896, 448, 4.0, 40  # 10 s; the initial frames are 5, 15, 25 and 35
#: Four new frames per request turn, none of them an initial frame: (timestamp s, frame index) at 4 fps.
REQUESTS = [[0.0, 0.5, 1.0, 1.5], [2.0, 2.5, 3.0, 3.5], [4.0, 4.5, 5.0, 5.5], [7.0, 7.5, 8.0, 8.5]]
QUESTION = "What colour?"


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path) -> tuple[Any, Any]:
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


def template_settings(**env: str) -> dict[str, Any]:
    """The dialogue and sequence lengths of the training template, as training composes them."""
    cfg = compose_training_config(template_overrides(**env))
    rollout = cfg.actor_rollout_ref.rollout
    return {
        "prompt_length": rollout.prompt_length,
        "response_length": rollout.response_length,
        **{
            key: value
            for section in OmegaConf.to_container(cfg.sparse_video).values()
            for key, value in section.items()
        },
    }


def long_turn(tokenizer: Any, tail: str, tokens: int) -> str:
    """``<think>`` + filler + ``</think>`` + ``tail`` that encodes to ``tokens`` tokens with the closing eos."""
    closing = len(tokenizer.encode(f"<think></think>{tail}", add_special_tokens=False)) + 1
    filler = " look" * (tokens - closing)  # one token per word in the tiny model's vocabulary
    text = f"<think>{filler}</think>{tail}"
    assert len(tokenizer.encode(text, add_special_tokens=False)) + 1 == tokens
    return text


def long_policy(tokenizer: Any, settings: dict[str, Any]) -> list[str]:
    """Request 4 new frames on every turn but the last, then answer; every turn is at the per-turn cap."""
    cap = settings["max_tokens_per_turn"]
    requests = [f"<frames>{', '.join(f'{t:g}' for t in ts)}</frames>" for ts in REQUESTS[: settings["max_turns"] - 1]]
    return [long_turn(tokenizer, tail, cap) for tail in [*requests, "<answer>C</answer>"]]


def row(video: Path) -> dict[str, Any]:
    extra_info = {"qid": "long", "video_path": str(video), "question": QUESTION, "answer": "C"}
    extra_info["options"] = ["red", "green", "blue", "yellow", "black"]
    return {"raw_prompt": [{"role": "user", "content": QUESTION}], "extra_info": extra_info}


def pad_run_lengths(ids: list[int], pad: int) -> list[int]:
    return [len(list(group)) for is_pad, group in itertools.groupby(ids, key=lambda t: t == pad) if is_pad]


def observation_lengths(output: Any) -> list[int]:
    """Tokens of each environment turn in the response (the frames, their text and the chat headers)."""
    return [len(list(group)) for mask, group in itertools.groupby(output.response_mask) if not mask]


def assert_every_image_intact(output: Any, tokenizer: Any, processor: Any, settings: dict[str, Any]) -> None:
    """One whole placeholder run per image, each as long as its grid, in the ids and in verl's batch."""
    images = output.multi_modal_data["images"]
    ids = output.prompt_ids + output.response_ids
    assert image_pad_runs(tokenizer, ids) == len(images)
    grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    expected = (grids.prod(dim=1) // processor.image_processor.merge_size**2).tolist()
    assert pad_run_lengths(ids, processor.image_token_id) == expected
    assert len(output.prompt_ids) <= settings["prompt_length"]
    assert len(output.response_ids) == len(output.response_mask) <= settings["response_length"]

    # verl's own post-processing re-runs the processor on the decoded ids: features match placeholders.
    (sample,), batch = to_training_batch(
        [output], tokenizer, processor, settings["prompt_length"], settings["response_length"]
    )
    inputs = sample.multi_modal_inputs
    assert inputs["image_grid_thw"].tolist() == grids.tolist()
    assert inputs["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    batch_ids = sample.input_ids[sample.attention_mask.bool()].tolist()
    assert pad_run_lengths(batch_ids, processor.image_token_id) == expected
    width = settings["prompt_length"] + settings["response_length"]
    assert batch.batch["input_ids"].shape == (1, width) and batch.batch["position_ids"].shape == (1, 4, width)
    # Every trained token is inside the attention mask.
    response_attention = sample.attention_mask[0, settings["prompt_length"] :]
    assert torch.all(response_attention[sample.response_mask[0].bool()] == 1)


def test_the_templates_longest_dialogue_shows_16_frames_in_4_turns_and_cuts_no_image(
    tiny_model_dir, tokenizer_and_processor, make_video
):
    tokenizer, processor = tokenizer_and_processor
    settings = template_settings()
    assert (settings["initial_frames"], settings["max_total_frames"], settings["max_turns"]) == (4, 16, 4)
    lengths = (settings["prompt_length"], settings["response_length"], settings["max_tokens_per_turn"])
    assert lengths == (1536, 4096, 512)
    script = long_policy(tokenizer, settings)
    video = make_video(num_frames=NUM_FRAMES, fps=FPS, width=WIDTH, height=HEIGHT)
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, ScriptedServer(tokenizer, script), **settings)
    (output,) = run_loop(loop, [row(video)])

    fields = output.extra_fields
    assert fields["stop_reason"] == StopReason.ANSWERED.value
    assert (fields["frames_used"], fields["assistant_turns"]) == (16, 4)
    assert fields["repeated_timestamps"] == fields["over_budget_timestamps"] == 0
    images = output.multi_modal_data["images"]
    assert [image.size for image in images] == [(448, 224)] * 16  # 128 visual tokens each
    assert [read_frame_index(image) for image in images] == [5, 15, 25, 35, *range(0, 24, 2)]
    assert model_turns(tokenizer, output) == [tokenizer.decode(tokenizer.encode(t)) for t in script]
    assert sum(output.response_mask) == 4 * settings["max_tokens_per_turn"]
    # 3 observations of 4 frames (128 tokens each plus their text) and 4 turns of 512 fit, with room to spare.
    observations = observation_lengths(output)
    assert len(observations) == 3 and all(length > 4 * 130 for length in observations)
    assert 3600 < len(output.response_ids) < settings["response_length"]
    assert_every_image_intact(output, tokenizer, processor, settings)


def test_thoughts_that_would_overflow_4096_end_the_dialogue_at_context_limit_with_every_image_whole(
    tiny_model_dir, tokenizer_and_processor, make_video
):
    """MAX_TOTAL_FRAMES=20 MAX_TURNS=5: the fourth observation would cross response_length, so none is appended."""
    tokenizer, processor = tokenizer_and_processor
    settings = template_settings(MAX_TOTAL_FRAMES="20", MAX_TURNS="5")
    assert (settings["max_total_frames"], settings["max_turns"], settings["response_length"]) == (20, 5, 4096)
    script = long_policy(tokenizer, settings)
    video = make_video(num_frames=NUM_FRAMES, fps=FPS, width=WIDTH, height=HEIGHT)
    server = ScriptedServer(tokenizer, script)
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server, **settings)
    (output,) = run_loop(loop, [row(video)])

    fields = output.extra_fields
    assert fields["stop_reason"] == StopReason.CONTEXT_LIMIT.value
    assert (fields["frames_used"], fields["assistant_turns"]) == (16, 4)  # the 4th request's frames never shown
    assert len(server.prompts) == 4
    # The dialogue ends on the model's complete 4th turn: the next observation, as long as the shortest before
    # it, would not have fitted.
    assert output.response_mask[-1] == 1 and output.response_ids[-1] == tokenizer.eos_token_id
    observations = observation_lengths(output)
    assert len(observations) == 3
    assert len(output.response_ids) <= settings["response_length"] < len(output.response_ids) + min(observations)
    assert_every_image_intact(output, tokenizer, processor, settings)
