"""OfflineVLLMServer's batching and request mapping, with a fake ``vllm.LLM`` (vLLM is not installed on CPU).

The fake has vLLM's ``generate(prompts, sampling_params)`` signature and returns objects shaped like its
``RequestOutput``; the real agent loop drives the server, so the prompts it sees are the ones vLLM would get.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from verl.utils.tokenizer import hf_processor

from sparse_video_r1 import evaluate
from sparse_video_r1.config import DialogueConfig
from sparse_video_r1.data import preprocess_split, read_nextqa_split
from sparse_video_r1.standalone import make_agent_loop
from sparse_video_r1.synthetic_nextqa import write_nextqa_like_release
from sparse_video_r1.vllm_server import VERL_WORKER_EXTENSION, OfflineVLLMServer

FIXTURES = Path(__file__).parent / "fixtures" / "nextqa"
OPTIONS = ["red", "green", "blue", "yellow", "black"]
REQUEST = "<think>I need the middle.</think><frames>2.0, 3.5</frames>"
ANSWER = "<think>Seen enough.</think><answer>C</answer>"
DIALOGUE = DialogueConfig(initial_frames=2, max_frames_per_request=2, max_total_frames=6, max_turns=3)


@dataclass
class FakeSamplingParams:
    """Stands in for ``vllm.SamplingParams``: keeps whatever the server sets."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    logprobs: int | None = None
    repetition_penalty: float = 1.0
    ignore_eos: bool = False


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str


@dataclass
class RequestOutput:
    outputs: list[Completion]
    num_cached_tokens: int = 0


@dataclass
class FakeLLM:
    """Answers like a policy that asks for frames once: a request while it has seen 2 frames, then an answer."""

    tokenizer: Any
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    params: list[FakeSamplingParams] = field(default_factory=list)
    finish_reason: str = "stop"

    def turn_ids(self, text: str) -> list[int]:
        return [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]

    def generate(self, prompts: list[dict[str, Any]], sampling_params: list[FakeSamplingParams], **kwargs: Any):
        self.batches.append(prompts)
        self.params.extend(sampling_params)
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            images = prompt.get("multi_modal_data", {}).get("image", [])
            text = REQUEST if len(images) <= DIALOGUE.initial_frames else ANSWER
            ids = self.turn_ids(text)[: params.max_tokens]
            logprobs = (
                [{token: Logprob(-0.5), token + 1: Logprob(-2.0)} for token in ids] if params.logprobs == 0 else None
            )
            outputs.append(RequestOutput([Completion(ids, logprobs, self.finish_reason)], num_cached_tokens=7))
        return outputs


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return hf_processor(str(tiny_model_dir))


def make_server(processor, llm: Any, **kwargs: Any) -> OfflineVLLMServer:
    options = {"max_model_len": 4096, "response_length": 2048, "max_wait_s": 30.0, **kwargs}
    return OfflineVLLMServer(llm, processor, FakeSamplingParams, **options)


def extra_info(video: Path, qid: str) -> dict[str, Any]:
    return {"qid": qid, "video_path": str(video), "question": "What colour?", "options": OPTIONS, "answer": "C"}


def play(loop, server: OfflineVLLMServer, infos: list[dict[str, Any]], sampling_params: dict[str, Any]):
    async def one(info: dict[str, Any]):
        async with server.dialogue():
            return await loop.run(dict(sampling_params), extra_info=info)

    async def all_dialogues():
        return await asyncio.gather(*(one(info) for info in infos))

    return loop.loop.run_until_complete(all_dialogues())


def test_concurrent_dialogues_reach_vllm_one_batch_per_turn_with_deduplicated_image_pads(
    tiny_model_dir, processor, make_video
):
    llm = FakeLLM(processor.tokenizer)
    server = make_server(processor, llm)
    loop = make_agent_loop(tiny_model_dir, server, DIALOGUE, prompt_length=2048, response_length=2048)
    videos = [make_video(num_frames=60, fps=10.0), make_video(num_frames=90, fps=10.0)]
    infos = [extra_info(videos[i % 2], f"q{i}") for i in range(5)]
    outputs = play(loop, server, infos, {"temperature": 0.0, "logprobs": True})

    assert [len(batch) for batch in llm.batches] == [5, 5]  # turn 1 of all five, then turn 2 of all five
    pad = processor.image_token_id
    for batch, frames in zip(llm.batches, (2, 4), strict=True):
        for prompt in batch:
            ids = prompt["prompt_token_ids"]
            assert len(prompt["multi_modal_data"]["image"]) == frames
            assert sum(1 for token in ids if token == pad) == frames  # one pad per image: vLLM re-expands them
            assert not any(a == b == pad for a, b in itertools.pairwise(ids))
    for output in outputs:
        assert output.extra_fields["stop_reason"] == "answered"
        assert output.extra_fields["frames_used"] == 4
        assert len(output.response_logprobs) == len(output.response_ids)
    stats = server.take_stats()
    assert (stats["batches"], stats["requests"], stats["max_batch"], stats["mean_batch"]) == (2, 10, 5, 5.0)
    assert stats["cached_prompt_tokens"] == 70
    assert stats["generated_tokens"] == sum(sum(output.response_mask) for output in outputs)
    # Counted as vLLM sees them once it re-expands each image: longer than the deduplicated ids.
    assert stats["prompt_tokens"] > sum(len(p["prompt_token_ids"]) for batch in llm.batches for p in batch)
    assert stats["prefix_cache_hit_rate"] == 70 / stats["prompt_tokens"]
    assert server.take_stats()["requests"] == 0


def test_a_dialogue_that_ends_early_does_not_hold_back_the_next_batch(tiny_model_dir, processor, make_video):
    class AnswersQuickQuestionsAtOnce(FakeLLM):
        def generate(self, prompts, sampling_params, **kwargs):
            outputs = super().generate(prompts, sampling_params, **kwargs)
            for prompt, output in zip(prompts, outputs, strict=True):
                if "Quick" in self.tokenizer.decode(prompt["prompt_token_ids"]):
                    output.outputs[0].token_ids = self.turn_ids(ANSWER)
            return outputs

    llm = AnswersQuickQuestionsAtOnce(processor.tokenizer)
    server = make_server(processor, llm)  # max_wait_s=30: only the dialogue count can release a batch in time
    loop = make_agent_loop(tiny_model_dir, server, DIALOGUE, prompt_length=2048, response_length=2048)
    video = make_video(num_frames=60, fps=10.0)
    infos = [
        extra_info(video, "slow0"),
        {**extra_info(video, "quick"), "question": "Quick?"},
        extra_info(video, "slow1"),
    ]
    started = asyncio.get_event_loop().time()
    outputs = play(loop, server, infos, {"temperature": 0.0})
    assert asyncio.get_event_loop().time() - started < 10
    assert [len(batch) for batch in llm.batches] == [3, 2]
    assert [o.extra_fields["assistant_turns"] for o in outputs] == [2, 1, 2]


def run(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


def test_sampling_params_and_outputs_follow_verls_vllm_server(processor):
    llm = FakeLLM(processor.tokenizer)
    server = make_server(processor, llm, max_model_len=100, response_length=30, max_wait_s=0.01)

    async def calls():
        asked = await server.generate(
            "a", prompt_ids=[1] * 10, sampling_params={"max_tokens": 500, "temperature": 0.3, "logprobs": True}
        )
        default = await server.generate("b", prompt_ids=[1] * 10, sampling_params={})
        last_room = await server.generate("c", prompt_ids=[1] * 99, sampling_params={"max_new_tokens": 5})
        return asked, default, last_room

    asked, default, last_room = run(calls())
    first, second, third = llm.params
    assert (first.max_tokens, first.temperature, first.logprobs) == (90, 0.3, 0)  # clamped to the context left
    assert (first.repetition_penalty, first.ignore_eos) == (1.0, False)
    assert (second.max_tokens, second.logprobs) == (30, None)  # no max_tokens: the response length
    assert third.max_tokens == 1
    assert asked.log_probs == [-0.5] * len(asked.token_ids)  # the sampled token's logprob, not the runner-up's
    assert default.log_probs is None and last_room.log_probs is None
    assert asked.stop_reason == "completed" and asked.extra_fields["num_cached_tokens"] == 7
    assert asked.token_ids[-1] == processor.tokenizer.eos_token_id
    with pytest.raises(ValueError, match="no room"):
        run(server.generate("d", prompt_ids=[1] * 100, sampling_params={}))


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "completed"), ("abort", "aborted")])
def test_finish_reasons_map_as_in_verl(processor, finish, stop_reason):
    llm = FakeLLM(processor.tokenizer, finish_reason=finish)
    server = make_server(processor, llm, max_wait_s=0.01)
    output = run(server.generate("a", prompt_ids=[1, 2, 3], sampling_params={"max_tokens": 4}))
    assert output.stop_reason == stop_reason


def test_untracked_requests_go_out_together_after_max_wait(processor):
    llm = FakeLLM(processor.tokenizer)
    server = make_server(processor, llm, max_wait_s=0.05)

    async def calls():
        ids = [[1, 2, 3]] * 3
        return await asyncio.gather(
            *(server.generate(str(i), prompt_ids=p, sampling_params={"max_tokens": 3}) for i, p in enumerate(ids))
        )

    assert len(run(calls())) == 3
    assert [len(batch) for batch in llm.batches] == [3]


def test_an_engine_failure_fails_its_batch_and_the_server_keeps_serving(processor):
    class FailsOnce(FakeLLM):
        def generate(self, prompts, sampling_params, **kwargs):
            if not self.batches:
                self.batches.append(prompts)
                raise RuntimeError("engine died")
            return super().generate(prompts, sampling_params, **kwargs)

    server = make_server(processor, FailsOnce(processor.tokenizer), max_wait_s=0.01)

    async def calls():
        first = await asyncio.gather(
            *(server.generate(str(i), prompt_ids=[1, 2], sampling_params={"max_tokens": 3}) for i in range(2)),
            return_exceptions=True,
        )
        return first, await server.generate("again", prompt_ids=[1, 2], sampling_params={"max_tokens": 3})

    failed, again = run(calls())
    assert all(isinstance(error, RuntimeError) for error in failed)
    assert again.stop_reason == "completed"


class LaunchedLLM(FakeLLM):
    """``vllm.LLM`` as :meth:`OfflineVLLMServer.launch` calls it: the constructor's arguments and RPCs recorded."""

    launched: ClassVar[list[LaunchedLLM]] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(hf_processor(model).tokenizer)
        self.model, self.kwargs = model, kwargs
        self.rpcs: list[tuple[str, dict[str, Any]]] = []
        LaunchedLLM.launched.append(self)

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None):
        self.rpcs.append((method, kwargs))
        return [None]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A ``vllm`` module holding the fakes; vLLM itself needs a GPU."""
    LaunchedLLM.launched.clear()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LaunchedLLM, SamplingParams=FakeSamplingParams))
    return LaunchedLLM


def test_evaluate_runs_every_method_through_one_launched_engine(tiny_model_dir, processor, fake_vllm, tmp_path):
    root = tmp_path / "nextqa"
    write_nextqa_like_release(FIXTURES, root / "raw", {"val": "val.csv"}, videos_per_split=2, max_seconds=12.0)
    data = preprocess_split(read_nextqa_split(root / "raw", "val"), root / "data").output
    out = tmp_path / "eval"
    args = ["--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--uniform", "2,4,8"]
    args += ["--initial-frames", "2", "--max-frames-per-request", "2", "--max-total-frames", "6", "--max-turns", "3"]
    args += ["--enforce-eager", "--gpu-memory-utilization", "0.3", "--vllm-kwargs", '{"max_num_seqs": 64}']
    settings = evaluate.settings_from_args(evaluate.parse_args(args))
    assert settings.backend == "vllm"
    results = evaluate.evaluate(settings, lambda: evaluate.make_server(settings))

    [llm] = fake_vllm.launched
    kwargs = llm.kwargs
    assert llm.model == str(tiny_model_dir.resolve())
    assert kwargs["limit_mm_per_prompt"] == {"image": 8}  # the largest method's frames: uniform_8
    assert kwargs["max_model_len"] == settings.prompt_length + settings.response_length
    assert (kwargs["enforce_eager"], kwargs["gpu_memory_utilization"], kwargs["max_num_seqs"]) == (True, 0.3, 64)
    assert kwargs["enable_prefix_caching"] and kwargs["worker_extension_cls"] == VERL_WORKER_EXTENSION
    # As verl's server does: the worker extension masks the vision placeholders so they are never sampled.
    banned = [processor.image_token_id, processor.video_token_id]
    assert llm.rpcs == [("monkey_patch_model", {"vocab_size": len(processor.tokenizer), "banned_token_ids": banned})]
    n = results["settings"]["questions"]
    for name, method in results["methods"].items():
        assert method["metrics"]["n"] == n, name
        [engine] = method["engine_runs"]
        # All questions of a turn go out in one batch: two turns for adaptive (request, answer), one per baseline.
        assert (engine["batches"], engine["max_batch"]) == ((2, n) if name == "adaptive" else (1, n)), name
    adaptive = results["methods"]["adaptive"]["metrics"]
    assert (adaptive["stop_reasons"], adaptive["frames_used_mean"]) == ({"answered": n}, 4)
    assert results["methods"]["uniform_2"]["metrics"]["stop_reasons"] == {"max_turns": n}  # it asked; it may not
