"""Batched vision windows: the same loss and gradients as transformers' one-call-per-window path, in fewer calls."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from sparse_video_r1.env.config import SparseVideoConfig
from sparse_video_r1.env.dialogue import VideoQA
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.training.sft import Trace, encode_dialogue, replay
from sparse_video_r1.training.vision_windows import NAME, batch_vision_windows

TURNS = ("<think>look</think><frames>1.0, 2.5, 4.0</frames>", "<think>done</think><answer>B</answer>")


@pytest.fixture(scope="module")
def example(make_video, tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    # 640x480 frames at the default pixel budget: 12 windows of 3 lengths each frame.
    sample = VideoQA(str(make_video(num_frames=60, fps=10.0, width=640, height=480)), "Which?", ("a", "b", "c"), "B")
    settings = SparseVideoConfig()
    messages, images = replay(Trace(sample, TURNS), settings.dialogue, FrameSampler.from_config(settings.decoding))
    return encode_dialogue(AutoProcessor.from_pretrained(tiny_model_dir), messages, images)


def _step(model_dir: Path, example: dict[str, torch.Tensor], batched: bool) -> tuple[float, torch.Tensor, Counter]:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    if batched:
        assert batch_vision_windows(model)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        loss = model(**example).loss
        loss.backward()
    calls = Counter(event.name for event in trace.events() if event.name == "aten::scaled_dot_product_attention")
    grads = torch.cat([parameter.grad.flatten() for parameter in model.parameters() if parameter.grad is not None])
    return loss.item(), grads, calls


def test_batched_windows_give_the_same_loss_and_gradients_in_fewer_attention_calls(tiny_model_dir, example):
    # The windowed block's windows: 8x8 patches (112 px), the frame's edge windows smaller.
    windows = int(torch.div(example["image_grid_thw"][:, 1:] + 7, 8, rounding_mode="floor").prod(dim=1).sum())
    loss, grads, calls = _step(tiny_model_dir, example, batched=False)
    batched_loss, batched_grads, batched_calls = _step(tiny_model_dir, example, batched=True)
    assert batched_loss == pytest.approx(loss, rel=1e-6)
    assert torch.allclose(batched_grads, grads, rtol=1e-4, atol=1e-6)
    # transformers: one call per window in the windowed block; batched: one per distinct window length.
    assert calls["aten::scaled_dot_product_attention"] > windows
    assert batched_calls["aten::scaled_dot_product_attention"] < windows / 10


def test_the_language_model_keeps_its_attention_and_flash_models_are_left_alone(tiny_model_dir):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert batch_vision_windows(model)
    assert model.config.vision_config._attn_implementation == NAME
    assert model.config.text_config._attn_implementation == "sdpa"
    model.config.vision_config._attn_implementation = "flash_attention_2"
    assert not batch_vision_windows(model)
    assert model.config.vision_config._attn_implementation == "flash_attention_2"
