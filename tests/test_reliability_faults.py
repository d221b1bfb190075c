"""Rollout faults through the real agent loop: a decode that hangs, an exception inside one sample.

In both the batch completes; the faulty sample is marked with its stop reason and failure reason, keeps the
tokens it produced but gets no gradient and a zero score, and verl's post-processing batches it with the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_agent_loop import ANSWER, FPS, REQUEST, make_loop, row, run_loop
from test_reward import verl_extra_info
from verl.utils.tokenizer import hf_processor, hf_tokenizer

from sparse_video_r1.env import frames
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.training.reward import compute_score
from sparse_video_r1.training.standalone import to_training_batch

#: The hanging video: 70 frames at 10 fps, so its initial frames (17, 52) differ from the requested 35.
HANGING_FRAMES = 70
#: REQUEST asks for 2.0 s and 3.55 s; frame 35 is where the hanging video's decoder stalls.
STALLED_INDEX = 35
DECODE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path):
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


@pytest.fixture
def stalled_decoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Make every decode of the hanging video that needs frame 35 block (as a stuck demuxer would)."""
    release = threading.Event()
    real = frames.sampler._decode_batch

    def decode(reader: frames.decoder._Reader, indices: list[int]) -> np.ndarray:
        if reader.num_frames == HANGING_FRAMES and STALLED_INDEX in indices:
            release.wait(timeout=30)
        return real(reader, indices)

    monkeypatch.setattr(frames.sampler, "_decode_batch", decode)
    yield release
    release.set()  # let the abandoned decoding thread finish


def scores(rows, outputs) -> list[tuple[float, float]]:
    result = []
    for sample, output in zip(rows, outputs, strict=True):
        score = compute_score("nextqa", "", "C", verl_extra_info(sample["extra_info"], output.extra_fields, 1))
        result.append((score["accuracy"], score["format"]))
    return result


def test_a_hanging_decode_times_out_and_only_that_sample_is_marked(
    tiny_model_dir: Path, tokenizer_and_processor, make_video, stalled_decoder: threading.Event
) -> None:
    tokenizer, processor = tokenizer_and_processor
    server = ScriptedServer(tokenizer, [REQUEST, ANSWER])
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server, decode_timeout_s=DECODE_TIMEOUT_S)
    rows = [
        row(make_video(num_frames=60, fps=FPS), "good"),
        row(make_video(num_frames=HANGING_FRAMES, fps=FPS), "hangs"),
        row(make_video(num_frames=50, fps=FPS), "also_good"),
    ]
    good, hangs, also_good = outputs = run_loop(loop, rows)

    for output in (good, also_good):
        assert output.extra_fields["stop_reason"] == "answered" and sum(output.response_mask) > 0
    fields = hangs.extra_fields
    assert (fields["stop_reason"], fields["failure_reason"]) == ("decode_timeout", "decode_timeout")
    assert fields["assistant_turns"] == 1  # the request turn was written before the decode stalled
    assert len(hangs.response_ids) > 0 and sum(hangs.response_mask) == 0  # kept, but no gradient
    assert fields["env_seconds"] >= DECODE_TIMEOUT_S
    assert scores(rows, outputs) == [(1.0, 1.0), (0.0, 0.0), (1.0, 1.0)]
    _, batch = to_training_batch(outputs, tokenizer, processor, 1024, 1024)
    assert list(batch.non_tensor_batch["stop_reason"]) == ["answered", "decode_timeout", "answered"]


class FlakyServer(ScriptedServer):
    """Loses the first request of the first dialogue it sees, as a dropped connection to a rollout server would."""

    def __init__(self, tokenizer, texts: list[str]) -> None:
        super().__init__(tokenizer, texts)
        self.failed_request: str | None = None

    async def generate(self, request_id: str, **kwargs):
        if self.failed_request in (None, request_id):
            self.failed_request = request_id
            raise ConnectionError(f"rollout server dropped request {request_id}")
        return await super().generate(request_id, **kwargs)


def test_an_exception_inside_one_sample_is_recorded_and_the_batch_completes(
    tiny_model_dir: Path, tokenizer_and_processor, make_video
) -> None:
    tokenizer, processor = tokenizer_and_processor
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, FlakyServer(tokenizer, [REQUEST, ANSWER]))
    rows = [row(make_video(num_frames=60, fps=FPS), f"q{i}") for i in range(4)]
    outputs = run_loop(loop, rows)

    failed = [output for output in outputs if output.extra_fields["stop_reason"] == "error"]
    assert len(failed) == 1
    (broken,) = failed
    assert broken.extra_fields["failure_reason"] == "ConnectionError"
    assert broken.extra_fields["assistant_turns"] == 0 and broken.response_mask == [0] * len(broken.response_ids)
    assert broken.extra_fields["frames_used"] == 2  # its opening frames were shown; the model never answered
    others = [output.extra_fields["stop_reason"] for output in outputs if output is not broken]
    assert others == ["answered"] * 3
    assert sorted(scores(rows, outputs)) == [(0.0, 0.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)]
    _, batch = to_training_batch(outputs, tokenizer, processor, 1024, 1024)
    assert batch.batch["input_ids"].shape[0] == 4
