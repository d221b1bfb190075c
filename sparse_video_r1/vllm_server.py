"""vLLM's offline engine behind verl's ``generate`` contract, batching the turns of concurrent dialogues.

Evaluation runs hundreds of dialogues at once through :class:`~sparse_video_r1.agent_loop.SparseVideoAgentLoop`,
each awaiting one ``generate`` per turn. The offline ``vllm.LLM`` is fastest when it gets every prompt in one
``generate`` call, so requests wait in a queue until every dialogue in flight is waiting for the model (or
``max_wait_s`` has passed, so a slow video decode cannot stall the others), then go to vLLM together. Turn
``t`` of all unfinished dialogues thus forms one batch. The driver reports dialogues in flight through
:meth:`OfflineVLLMServer.dialogue`.

Requests are prepared and answered exactly as verl's own vLLM server prepares them
(``verl.workers.rollout.vllm_rollout.vllm_async_server.vLLMHttpServer.generate``), so evaluation sees the
model as training's rollouts do. vLLM is imported only by :meth:`OfflineVLLMServer.launch`; the module
imports on a CPU machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl.workers.rollout.replica import TokenOutput
from verl.workers.rollout.utils import get_vision_placeholder_token_ids, qwen2_5_vl_dedup_image_tokens

logger = logging.getLogger(__name__)

#: verl's worker extension: its ``monkey_patch_model`` masks tokens the model must never sample.
VERL_WORKER_EXTENSION = "verl.workers.rollout.vllm_rollout.utils.vLLMColocateWorkerExtension"


@dataclass
class EngineStats:
    """What the engine did: batch sizes show the batching works, cached tokens show prefix reuse across turns."""

    batches: int = 0
    requests: int = 0
    max_batch: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        stats = asdict(self)
        stats["mean_batch"] = self.requests / self.batches if self.batches else 0.0
        stats["prefix_cache_hit_rate"] = self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return stats


@dataclass
class _Request:
    prompt: dict[str, Any]
    params: Any
    want_logprobs: bool
    expanded_length: int
    future: asyncio.Future = field(repr=False)


class OfflineVLLMServer:
    """Serves ``generate`` from an offline ``vllm.LLM`` (or anything with its ``generate(prompts, params)``).

    ``make_sampling_params`` is ``vllm.SamplingParams`` in production; tests pass a stand-in. ``max_model_len``
    and ``response_length`` bound ``max_tokens`` as verl's server bounds them. All engine calls run on one
    worker thread, one batch at a time, so the event loop keeps decoding frames meanwhile.
    """

    def __init__(
        self,
        llm: Any,
        processor: Any,
        make_sampling_params: Callable[..., Any],
        *,
        max_model_len: int,
        response_length: int,
        max_wait_s: float = 0.5,
    ) -> None:
        self.llm = llm
        self.processor = processor
        self.make_sampling_params = make_sampling_params
        self.max_model_len = max_model_len
        self.response_length = response_length
        self.max_wait_s = max_wait_s
        self.stats = EngineStats()
        self._pending: list[_Request] = []
        self._active = 0
        self._changed = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svr1-vllm")

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
    ) -> OfflineVLLMServer:
        """Start the engine with verl's rollout defaults; ``engine_kwargs`` override any ``vllm.LLM`` argument.

        ``max_images`` becomes ``limit_mm_per_prompt`` (size it with
        :meth:`~sparse_video_r1.config.DialogueConfig.max_images_per_prompt`) and the context holds
        ``prompt_length + response_length`` tokens, as in training.
        """
        # The caller may have touched CUDA already (memory stats, a torch model); vLLM's default fork of its
        # engine process then dies with "Cannot re-initialize CUDA in forked subprocess".
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        import vllm
        from verl.utils.tokenizer import hf_processor

        max_model_len = prompt_length + response_length
        kwargs: dict[str, Any] = {
            "dtype": "bfloat16",
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": max_images},
            "enable_prefix_caching": True,
            "gpu_memory_utilization": 0.8,
            "seed": seed,
            "worker_extension_cls": VERL_WORKER_EXTENSION,
            **(engine_kwargs or {}),
        }
        logger.info("starting vllm.LLM(%s, %s)", model_path, kwargs)
        llm = vllm.LLM(str(model_path), **kwargs)
        processor = hf_processor(str(model_path))
        # verl bans the vision placeholders the same way: a sampled <|image_pad|> has no image behind it
        # and would break the next turn's prompt.
        llm.collective_rpc(
            "monkey_patch_model",
            kwargs={
                "vocab_size": len(processor.tokenizer),
                "banned_token_ids": get_vision_placeholder_token_ids(processor),
            },
        )
        return cls(llm, processor, vllm.SamplingParams, max_model_len=max_model_len, response_length=response_length)

    def take_stats(self) -> dict[str, Any]:
        """The engine counters since the last call (evaluation reports them per method)."""
        stats, self.stats = self.stats, EngineStats()
        return stats.as_dict()

    @contextlib.asynccontextmanager
    async def dialogue(self) -> AsyncIterator[None]:
        """Count a dialogue as in flight, so a batch goes out as soon as all of them wait for the model."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._changed.set()

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list | None = None,
        video_data: Any = None,
        audio_data: Any = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Queue one request and wait for the batch it goes out with; ``prompt_ids`` carry expanded image pads."""
        if video_data or audio_data:
            raise NotImplementedError("OfflineVLLMServer serves images only; send video frames as images")
        params, want_logprobs = self._sampling_params(len(prompt_ids), sampling_params)
        prompt: dict[str, Any] = {"prompt_token_ids": qwen2_5_vl_dedup_image_tokens(list(prompt_ids), self.processor)}
        if image_data:
            prompt["multi_modal_data"] = {"image": list(image_data)}
        if mm_processor_kwargs:
            prompt["mm_processor_kwargs"] = mm_processor_kwargs
        request = _Request(prompt, params, want_logprobs, len(prompt_ids), asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._changed.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return _token_output(await request.future, want_logprobs)

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

    async def _flush(self) -> None:
        """Send batches until no request is left; one ``llm.generate`` at a time."""
        while self._pending:
            await self._gather_batch()
            batch, self._pending = self._pending, []
            started = time.perf_counter()
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._engine_thread, self._generate, [r.prompt for r in batch], [r.params for r in batch]
                )
            except Exception as error:
                logger.exception("vLLM failed on a batch of %d requests", len(batch))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            self._count(batch, outputs, time.perf_counter() - started)
            for request, output in zip(batch, outputs, strict=True):
                if not request.future.done():
                    request.future.set_result(output)

    async def _gather_batch(self) -> None:
        """Wait until every dialogue in flight has a request queued, or ``max_wait_s`` after the first one."""
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while not (self._active and len(self._pending) >= self._active):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _generate(self, prompts: list[dict[str, Any]], params: list[Any]) -> Sequence[Any]:
        return self.llm.generate(prompts, params, use_tqdm=False)

    def _count(self, batch: list[_Request], outputs: Sequence[Any], seconds: float) -> None:
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        self.stats.prompt_tokens += sum(request.expanded_length for request in batch)
        self.stats.cached_prompt_tokens += sum(getattr(output, "num_cached_tokens", None) or 0 for output in outputs)
        self.stats.generated_tokens += sum(len(output.outputs[0].token_ids) for output in outputs if output.outputs)
        self.stats.engine_seconds += seconds


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
