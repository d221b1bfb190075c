"""AsyncVLLMServer's request mapping and continuous release, with a fake ``AsyncLLM`` (vLLM is not installed on CPU).

The fake has ``AsyncLLM.generate(prompt, sampling_params, request_id)``'s signature, streams objects shaped like
vLLM's ``RequestOutput`` and takes a set time per request; the real agent loop drives the server, so the prompts
it sees are the ones vLLM would get.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from verl.utils.tokenizer import hf_processor

from sparse_video_r1.data import preprocess_split, read_nextqa_split
from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig
from sparse_video_r1.serving.vllm_server import VERL_WORKER_EXTENSION, AsyncVLLMServer
from sparse_video_r1.synthetic.nextqa import write_nextqa_like_release
from sparse_video_r1.tools import evaluate
from sparse_video_r1.training.standalone import make_agent_loop

FIXTURES = Path(__file__).parent / "fixtures" / "nextqa"
OPTIONS = ["red", "green", "blue", "yellow", "black"]
REQUEST = "<think>I need the middle.</think><frames>2.0, 3.5</frames>"
ANSWER = "<think>Seen enough.</think><answer>C</answer>"
DIALOGUE = SparseVideoConfig(DialogueRules(initial_frames=2, max_frames_per_request=2, max_total_frames=6, max_turns=3))


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
    finish_reason: str | None


@dataclass
class RequestOutput:
    outputs: list[Completion]
    finished: bool
    num_cached_tokens: int = 0


@dataclass
class FakeAsyncLLM:
    """Answers like a policy that asks for frames once: a request while it has seen 2 frames, then an answer.

    Each request takes ``seconds`` (``slow_seconds`` if its prompt mentions "Slow") and streams one partial
    output before its final one. It records what it was sent, when, and on which thread.
    """

    tokenizer: Any
    seconds: float = 0.05
    slow_seconds: float = 0.05
    finish_reason: str = "stop"
    fail_first: bool = False
    prompts: list[dict[str, Any]] = field(default_factory=list)
    params: list[FakeSamplingParams] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)

    def turn_ids(self, text: str) -> list[int]:
        return [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]

    async def generate(self, prompt: dict[str, Any], sampling_params: FakeSamplingParams, request_id: str):
        self.threads.add(threading.current_thread().name)
        self.prompts.append(prompt)
        self.params.append(sampling_params)
        self.request_ids.append(request_id)
        text_in = self.tokenizer.decode(prompt["prompt_token_ids"])
        self.events.append(("start", text_in))
        if self.fail_first and len(self.prompts) == 1:
            raise RuntimeError("engine died")
        images = prompt.get("multi_modal_data", {}).get("image", [])
        ids = self.turn_ids(REQUEST if len(images) <= DIALOGUE.dialogue.initial_frames else ANSWER)
        ids = ids[: sampling_params.max_tokens]
        logprobs = (
            [{token: Logprob(-0.5), token + 1: Logprob(-2.0)} for token in ids]
            if sampling_params.logprobs == 0
            else None
        )
        try:
            yield RequestOutput([Completion(ids[:1], None, None)], finished=False)
            await asyncio.sleep(self.slow_seconds if "Slow" in text_in else self.seconds)
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise
        self.events.append(("end", text_in))
        yield RequestOutput([Completion(ids, logprobs, self.finish_reason)], finished=True, num_cached_tokens=7)


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return hf_processor(str(tiny_model_dir))


@pytest.fixture
def make_server(processor):
    servers = []

    def factory(engine: Any, **kwargs: Any) -> AsyncVLLMServer:
        options = {"max_model_len": 4096, "response_length": 2048, **kwargs}
        servers.append(AsyncVLLMServer(lambda: engine, processor, FakeSamplingParams, **options))
        return servers[-1]

    yield factory
    for server in servers:
        server.close()


def extra_info(video: Path, qid: str, question: str = "What colour?") -> dict[str, Any]:
    return {"qid": qid, "video_path": str(video), "question": question, "options": OPTIONS, "answer": "C"}


def play(loop, infos: list[dict[str, Any]], sampling_params: dict[str, Any]):
    async def all_dialogues():
        return await asyncio.gather(*(loop.run(dict(sampling_params), extra_info=info) for info in infos))

    return loop.loop.run_until_complete(all_dialogues())


def test_concurrent_dialogues_reach_the_engine_together_with_deduplicated_image_pads(
    tiny_model_dir, processor, make_video, make_server
):
    engine = FakeAsyncLLM(processor.tokenizer, seconds=0.5)
    server = make_server(engine)
    loop = make_agent_loop(tiny_model_dir, server, DIALOGUE, prompt_length=2048, response_length=2048)
    videos = [make_video(num_frames=60, fps=10.0), make_video(num_frames=90, fps=10.0)]
    infos = [extra_info(videos[i % 2], f"q{i}") for i in range(5)]
    outputs = play(loop, infos, {"temperature": 0.0, "logprobs": True})

    pad = processor.image_token_id
    frames_shown = sorted(len(prompt["multi_modal_data"]["image"]) for prompt in engine.prompts)
    assert frames_shown == [2] * 5 + [4] * 5  # turn 1 of all five, then turn 2 of all five
    for prompt in engine.prompts:
        ids = prompt["prompt_token_ids"]
        assert sum(1 for token in ids if token == pad) == len(prompt["multi_modal_data"]["image"])  # vLLM re-expands
        assert not any(a == b == pad for a, b in itertools.pairwise(ids))
    # The engine runs on the server's own loop thread, never on the dialogues' loop.
    assert engine.threads == {"svr1-vllm"}
    assert len(set(engine.request_ids)) == 10  # one engine id per request, though a dialogue keeps its own id
    for output in outputs:
        assert output.extra_fields["stop_reason"] == "answered"
        assert output.extra_fields["frames_used"] == 4
        assert len(output.response_logprobs) == len(output.response_ids)
    stats = server.take_stats()
    assert stats["requests"] == 10 and stats["max_in_flight"] == 5  # 0.5 s each: every dialogue's turn overlaps
    assert stats["mean_in_flight"] > 2 and 0 < stats["busy_seconds"] <= stats["request_seconds"]
    assert stats["cached_prompt_tokens"] == 70
    assert stats["generated_tokens"] == sum(sum(output.response_mask) for output in outputs)
    # Counted as vLLM sees them once it re-expands each image: longer than the deduplicated ids.
    assert stats["prompt_tokens"] > sum(len(p["prompt_token_ids"]) for p in engine.prompts)
    assert stats["prefix_cache_hit_rate"] == 70 / stats["prompt_tokens"]
    assert server.take_stats()["requests"] == 0


def test_each_dialogue_sends_its_next_turn_as_soon_as_it_is_ready(tiny_model_dir, processor, make_video, make_server):
    """A dialogue whose turn takes long holds no one back: the others play both turns meanwhile."""
    engine = FakeAsyncLLM(processor.tokenizer, seconds=0.05, slow_seconds=3.0)
    server = make_server(engine)
    loop = make_agent_loop(tiny_model_dir, server, DIALOGUE, prompt_length=2048, response_length=2048)
    video = make_video(num_frames=60, fps=10.0)
    infos = [extra_info(video, "quick0"), extra_info(video, "slow", "Slow?"), extra_info(video, "quick1")]
    outputs = play(loop, infos, {"temperature": 0.0})

    assert [o.extra_fields["assistant_turns"] for o in outputs] == [2, 2, 2]
    slow_turn_one_ends = next(i for i, (kind, text) in enumerate(engine.events) if kind == "end" and "Slow" in text)
    quick_ends = [i for i, (kind, text) in enumerate(engine.events) if kind == "end" and "Slow" not in text]
    assert len(quick_ends) == 4 and max(quick_ends) < slow_turn_one_ends


def run(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


def test_sampling_params_and_outputs_follow_verls_vllm_server(processor, make_server):
    engine = FakeAsyncLLM(processor.tokenizer, seconds=0.0)
    server = make_server(engine, max_model_len=100, response_length=30)

    async def calls():
        asked = await server.generate(
            "a", prompt_ids=[1] * 10, sampling_params={"max_tokens": 500, "temperature": 0.3, "logprobs": True}
        )
        default = await server.generate("b", prompt_ids=[1] * 10, sampling_params={})
        last_room = await server.generate("c", prompt_ids=[1] * 99, sampling_params={"max_new_tokens": 5})
        return asked, default, last_room

    asked, default, last_room = run(calls())
    first, second, third = engine.params
    assert (first.max_tokens, first.temperature, first.logprobs) == (90, 0.3, 0)  # clamped to the context left
    assert (first.repetition_penalty, first.ignore_eos) == (1.0, False)
    assert (second.max_tokens, second.logprobs) == (30, None)  # no max_tokens: the response length
    assert third.max_tokens == 1
    assert asked.log_probs == [-0.5] * len(asked.token_ids)  # the sampled token's logprob, not the runner-up's
    assert default.log_probs is None and last_room.log_probs is None
    assert asked.stop_reason == "completed" and asked.extra_fields["num_cached_tokens"] == 7
    assert asked.token_ids[-1] == processor.tokenizer.eos_token_id  # the final output, not the streamed partial
    with pytest.raises(ValueError, match="no room"):
        run(server.generate("d", prompt_ids=[1] * 100, sampling_params={}))


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "completed"), ("abort", "aborted")])
def test_finish_reasons_map_as_in_verl(processor, make_server, finish, stop_reason):
    server = make_server(FakeAsyncLLM(processor.tokenizer, seconds=0.0, finish_reason=finish))
    output = run(server.generate("a", prompt_ids=[1, 2, 3], sampling_params={"max_tokens": 4}))
    assert output.stop_reason == stop_reason


def test_an_engine_failure_fails_its_request_and_the_server_keeps_serving(processor, make_server):
    server = make_server(FakeAsyncLLM(processor.tokenizer, seconds=0.0, fail_first=True))
    with pytest.raises(RuntimeError, match="engine died"):
        run(server.generate("first", prompt_ids=[1, 2], sampling_params={"max_tokens": 3}))
    assert (
        run(server.generate("again", prompt_ids=[1, 2], sampling_params={"max_tokens": 3})).stop_reason == "completed"
    )
    assert server.take_stats()["requests"] == 1


def test_a_cancelled_caller_cancels_its_request_in_the_engine(processor, make_server):
    engine = FakeAsyncLLM(processor.tokenizer, seconds=30.0)
    server = make_server(engine)

    async def cancel_midway():
        task = asyncio.create_task(server.generate("gone", prompt_ids=[1, 2], sampling_params={"max_tokens": 3}))
        while not engine.request_ids:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not engine.cancelled:
            await asyncio.sleep(0.01)

    run(asyncio.wait_for(cancel_midway(), 10))
    assert engine.cancelled == engine.request_ids


def test_close_shuts_the_engine_down_and_lets_its_tasks_finish(processor):
    @dataclass
    class WithOutputHandler(FakeAsyncLLM):
        """Like vLLM's AsyncLLM, it starts a task on the loop it is built in."""

        shut_down: bool = False

        def __post_init__(self) -> None:
            self.handler = asyncio.get_running_loop().create_task(asyncio.sleep(3600))

        def shutdown(self) -> None:
            self.shut_down = True

    server = AsyncVLLMServer(
        lambda: WithOutputHandler(processor.tokenizer, seconds=0.0),
        processor,
        FakeSamplingParams,
        max_model_len=64,
        response_length=8,
    )
    assert run(server.generate("a", prompt_ids=[1, 2], sampling_params={"max_tokens": 2})).stop_reason == "completed"
    server.close()
    assert server.engine.shut_down and server.engine.handler.cancelled()
    server.close()  # a second close does nothing


class LaunchedAsyncLLM(FakeAsyncLLM):
    """``AsyncLLM`` as :meth:`AsyncVLLMServer.launch` builds it: the engine arguments, RPCs and shutdown recorded."""

    launched: ClassVar[list[LaunchedAsyncLLM]] = []

    def __init__(self, args: FakeEngineArgs) -> None:
        super().__init__(hf_processor(args.model).tokenizer, seconds=0.2)
        self.args = args
        self.rpcs: list[tuple[str, dict[str, Any], str]] = []
        self.shut_down = False
        LaunchedAsyncLLM.launched.append(self)

    @classmethod
    def from_engine_args(cls, args: FakeEngineArgs) -> LaunchedAsyncLLM:
        asyncio.get_running_loop()  # vLLM binds its output handler to the loop it is built in
        return cls(args)

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None):
        self.rpcs.append((method, kwargs, threading.current_thread().name))
        return [None]

    def shutdown(self) -> None:
        self.shut_down = True


class FakeEngineArgs:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model, self.kwargs = model, kwargs


def module(name: str, **attributes: Any) -> types.ModuleType:
    made = types.ModuleType(name)
    made.__dict__.update(attributes)
    return made


@pytest.fixture
def fake_vllm(monkeypatch) -> type[LaunchedAsyncLLM]:
    """The ``vllm`` modules that ``launch`` imports, holding the fakes; vLLM itself needs a GPU."""
    LaunchedAsyncLLM.launched.clear()
    fakes = {
        "vllm": module("vllm", SamplingParams=FakeSamplingParams),
        "vllm.engine": module("vllm.engine"),
        "vllm.engine.arg_utils": module("vllm.engine.arg_utils", AsyncEngineArgs=FakeEngineArgs),
        "vllm.v1": module("vllm.v1"),
        "vllm.v1.engine": module("vllm.v1.engine"),
        "vllm.v1.engine.async_llm": module("vllm.v1.engine.async_llm", AsyncLLM=LaunchedAsyncLLM),
    }
    for name, fake in fakes.items():
        monkeypatch.setitem(sys.modules, name, fake)
    return LaunchedAsyncLLM


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

    [engine] = fake_vllm.launched
    kwargs = engine.args.kwargs
    assert engine.args.model == str(tiny_model_dir.resolve())
    assert kwargs["limit_mm_per_prompt"] == {"image": 8}  # the largest method's frames: uniform_8
    assert kwargs["max_model_len"] == settings.prompt_length + settings.response_length
    assert (kwargs["enforce_eager"], kwargs["gpu_memory_utilization"], kwargs["max_num_seqs"]) == (True, 0.3, 64)
    assert kwargs["enable_prefix_caching"] and kwargs["worker_extension_cls"] == VERL_WORKER_EXTENSION
    # As verl's server does: the worker extension masks the vision placeholders so they are never sampled.
    banned = [processor.image_token_id, processor.video_token_id]
    expected = {"vocab_size": len(processor.tokenizer), "banned_token_ids": banned}
    assert engine.rpcs == [("monkey_patch_model", expected, "svr1-vllm")]
    assert engine.shut_down  # evaluate closes the engine when it is done
    n = results["settings"]["questions"]
    for name, method in results["methods"].items():
        assert method["metrics"]["n"] == n, name
        [stats] = method["engine_runs"]
        # Two requests per question for adaptive (request, answer), one per baseline; the questions overlap.
        assert stats["requests"] == (2 * n if name == "adaptive" else n), name
        assert stats["max_in_flight"] > 1, name
    adaptive = results["methods"]["adaptive"]["metrics"]
    assert (adaptive["stop_reasons"], adaptive["frames_used_mean"]) == ({"answered": n}, 4)
    assert results["methods"]["uniform_2"]["metrics"]["stop_reasons"] == {"max_turns": n}  # it asked; it may not
