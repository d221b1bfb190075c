"""vLLM's ``AsyncLLM`` behind verl's ``generate`` contract, for evaluation and benchmarks outside the trainer.

Evaluation runs hundreds of dialogues at once through
:class:`~sparse_video_r1.training.agent_loop.SparseVideoAgentLoop`, each awaiting one ``generate`` per turn.
Every request goes to the engine the moment its dialogue makes it, and vLLM's scheduler batches whatever is in
flight at each step (continuous batching), as it does behind verl's own rollout server during training. So one
dialogue's frame decoding overlaps the others' generation, and no dialogue waits for the slowest one of a
batch.

Requests are prepared and answered exactly as verl's server prepares them
(``verl.workers.rollout.vllm_rollout.vllm_async_server.vLLMHttpServer.generate``), so evaluation sees the
model as training's rollouts do. vLLM is imported only by :meth:`AsyncVLLMServer.launch`; the module imports
on a CPU machine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from verl.workers.rollout.replica import TokenOutput
from verl.workers.rollout.utils import get_vision_placeholder_token_ids, qwen2_5_vl_dedup_image_tokens

from sparse_video_r1.serving.base import ImageRequest, ImageServer

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: verl's worker extension: its ``monkey_patch_model`` masks tokens the model must never sample.
VERL_WORKER_EXTENSION = "verl.workers.rollout.vllm_rollout.utils.vLLMColocateWorkerExtension"


@dataclass
class EngineStats:
    """What the engine did: concurrency shows the batching works, cached tokens show prefix reuse across turns."""

    requests: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    #: Wall time with at least one request in the engine.
    busy_seconds: float = 0.0
    #: Sum over requests of their time in the engine; over ``busy_seconds`` it is the mean number in flight.
    request_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        stats = asdict(self)
        stats["mean_in_flight"] = self.request_seconds / self.busy_seconds if self.busy_seconds else 0.0
        stats["prefix_cache_hit_rate"] = self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return stats


class AsyncVLLMServer(ImageServer):
    """A :class:`~sparse_video_r1.serving.base.GenerateServer` on a ``vllm.v1.engine.async_llm.AsyncLLM``
    (or anything with its async ``generate``).

    The engine lives on its own event loop in a background thread, created there by ``make_engine``: vLLM
    prepares a request's images synchronously when it is added, and on the callers' loop that work would
    stall every other dialogue. Callers on any loop await their request's final output.
    ``make_sampling_params`` is ``vllm.SamplingParams`` in production; tests pass a stand-in.
    ``max_model_len`` and ``response_length`` bound ``max_tokens`` as verl's server bounds them.
    """

    def __init__(
        self,
        make_engine: Callable[[], Any],
        processor: Any,
        make_sampling_params: Callable[..., Any],
        *,
        max_model_len: int,
        response_length: int,
    ) -> None:
        self.processor = processor
        self.make_sampling_params = make_sampling_params
        self.max_model_len = max_model_len
        self.response_length = response_length
        self.stats = EngineStats()
        self._request_numbers = itertools.count()
        self._in_flight = 0
        self._busy_since = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="svr1-vllm", daemon=True)
        self._thread.start()
        self.engine = self.call(_construct(make_engine))

    @classmethod
    def launch(
        cls,
        model_path: str | Path,
        *,
        max_images: int,
        prompt_length: int,
        response_length: int,
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> AsyncVLLMServer:
        """Start the engine with verl's rollout defaults; ``engine_kwargs`` override any engine argument.

        ``max_images`` becomes ``limit_mm_per_prompt`` (size it with
        :meth:`~sparse_video_r1.env.config.DialogueRules.max_images_per_prompt`) and the context holds
        ``prompt_length + response_length`` tokens, as in training.
        """
        # The caller may have touched CUDA already (memory stats, a torch model); vLLM's default fork of its
        # engine process then dies with "Cannot re-initialize CUDA in forked subprocess".
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        import vllm
        from verl.utils.tokenizer import hf_processor
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs: dict[str, Any] = {
            "dtype": "bfloat16",
            "max_model_len": prompt_length + response_length,
            "limit_mm_per_prompt": {"image": max_images},
            "enable_prefix_caching": True,
            "gpu_memory_utilization": 0.8,
            "seed": seed,
            "worker_extension_cls": VERL_WORKER_EXTENSION,
            "disable_log_stats": True,
            **(engine_kwargs or {}),
        }
        logger.info("starting AsyncLLM(%s, %s)", model_path, kwargs)
        processor = hf_processor(str(model_path))
        server = cls(
            lambda: AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model_path), **kwargs)),
            processor,
            vllm.SamplingParams,
            max_model_len=kwargs["max_model_len"],
            response_length=response_length,
        )
        # verl bans the vision placeholders the same way: a sampled <|image_pad|> has no image behind it
        # and would break the next turn's prompt.
        server.call(
            server.engine.collective_rpc(
                "monkey_patch_model",
                kwargs={
                    "vocab_size": len(processor.tokenizer),
                    "banned_token_ids": get_vision_placeholder_token_ids(processor),
                },
            )
        )
        return server

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the engine's loop and wait for it (from a thread not running that loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def take_stats(self) -> dict[str, Any]:
        """The engine counters since the last call (evaluation reports them per method)."""
        return self.call(self._swap_stats())

    def close(self) -> None:
        """Shut the engine down and stop its loop; the server serves no more requests."""
        if not self._thread.is_alive():
            return
        try:
            self.call(self._shut_down())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=60)

    async def _shut_down(self) -> None:
        """Stop the engine, then let the tasks it leaves on this loop (its output handlers) finish cancelling."""
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=10)

    async def serve(self, request: ImageRequest) -> TokenOutput:
        """Send one request to the engine and wait for its final output; ``prompt_ids`` carry expanded image pads."""
        prompt_ids = request.prompt_ids
        params, want_logprobs = self._sampling_params(len(prompt_ids), request.sampling_params)
        prompt: dict[str, Any] = {"prompt_token_ids": qwen2_5_vl_dedup_image_tokens(list(prompt_ids), self.processor)}
        if request.images:
            prompt["multi_modal_data"] = {"image": request.images}
        if request.mm_processor_kwargs:
            prompt["mm_processor_kwargs"] = request.mm_processor_kwargs
        # A dialogue sends all its turns under one id (verl routes them to one server by it); the engine
        # gets a fresh one per request, so a retried or overlapping turn can never collide with another.
        engine_id = f"{request.request_id}-{next(self._request_numbers)}"
        running = asyncio.run_coroutine_threadsafe(
            self._complete(prompt, params, engine_id, len(prompt_ids)), self._loop
        )
        return _token_output(await asyncio.wrap_future(running), want_logprobs)

    def _sampling_params(self, prompt_length: int, requested: dict[str, Any]) -> tuple[Any, bool]:
        """verl's mapping: ``max_tokens`` clamped to the context left, ``logprobs`` as 0 (sampled token) or None."""
        params = dict(requested)
        room = self.max_model_len - prompt_length
        if room < 1:
            raise ValueError(
                f"prompt of {prompt_length} tokens leaves no room to generate within max_model_len={self.max_model_len}"
            )
        if "max_tokens" in params:
            max_tokens = params.pop("max_tokens")
        elif "max_new_tokens" in params:
            max_tokens = params.pop("max_new_tokens")
        else:
            max_tokens = min(self.response_length, room)
        want_logprobs = bool(params.pop("logprobs", False))
        params["logprobs"] = 0 if want_logprobs else None
        params.setdefault("repetition_penalty", 1.0)
        params.setdefault("ignore_eos", False)
        return self.make_sampling_params(max_tokens=max(1, min(max_tokens, room)), **params), want_logprobs

    async def _complete(self, prompt: dict[str, Any], params: Any, engine_id: str, expanded_length: int) -> Any:
        """On the engine's loop: stream one request to its end, counting it; returns its final ``RequestOutput``."""
        started = self._enter()
        final = None
        try:
            async for output in self.engine.generate(prompt, params, engine_id):
                final = output
        finally:
            self._leave(started)
        if final is None:
            raise RuntimeError(f"the engine returned no output for request {engine_id}")
        self.stats.requests += 1
        self.stats.prompt_tokens += expanded_length
        self.stats.cached_prompt_tokens += getattr(final, "num_cached_tokens", None) or 0
        self.stats.generated_tokens += len(final.outputs[0].token_ids) if final.outputs else 0
        return final

    def _enter(self) -> float:
        now = time.perf_counter()
        if self._in_flight == 0:
            self._busy_since = now
        self._in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
        return now

    def _leave(self, started: float) -> None:
        now = time.perf_counter()
        self._in_flight -= 1
        self.stats.request_seconds += now - started
        if self._in_flight == 0:
            self.stats.busy_seconds += now - self._busy_since

    async def _swap_stats(self) -> dict[str, Any]:
        stats, self.stats = self.stats, EngineStats(max_in_flight=self._in_flight)
        if self._in_flight:  # a request still running: its busy stretch so far belongs to these stats
            now = time.perf_counter()
            stats.busy_seconds += now - self._busy_since
            self._busy_since = now
        return stats.as_dict()


async def _construct(make_engine: Callable[[], _T]) -> _T:
    """Build the engine inside the loop that will drive it, as verl's server does (vLLM binds to that loop)."""
    return make_engine()


def _token_output(output: Any, want_logprobs: bool) -> TokenOutput:
    """A vLLM ``RequestOutput`` as verl's server returns it (finish ``stop``/``length`` both mean completed)."""
    extra_fields = {"num_cached_tokens": getattr(output, "num_cached_tokens", None)}
    if not output.outputs:
        return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", extra_fields=extra_fields)
    completion = output.outputs[0]
    token_ids = list(completion.token_ids)
    log_probs = None
    if want_logprobs:
        log_probs = [step[token_ids[i]].logprob for i, step in enumerate(completion.logprobs)]
    finish = completion.finish_reason
    stop_reason = "aborted" if finish == "abort" else "completed" if finish in ("stop", "length") else finish
    return TokenOutput(token_ids=token_ids, log_probs=log_probs, stop_reason=stop_reason, extra_fields=extra_fields)
