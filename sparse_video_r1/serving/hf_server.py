"""transformers-backed stand-ins for verl's LLM server, so the real agent loop runs on CPU without vLLM.

Both classes keep :class:`~sparse_video_r1.serving.base.GenerateServer`, the coroutine the agent loop awaits on
``server_manager.generate`` (see ``verl.workers.rollout.llm_server.LLMServerClient.generate``), and return a
``TokenOutput`` shaped like the vLLM server's: the response tokens include the stop token, and ``stop_reason``
is ``"completed"`` whether generation hit eos or ``max_tokens`` (vLLM maps both ``stop`` and ``length`` to it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, GenerationConfig, PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration
from verl.workers.rollout.replica import TokenOutput

from sparse_video_r1.serving.base import ImageRequest, ImageServer

logger = logging.getLogger(__name__)

#: verl's fallback when a request names no ``max_tokens`` is the rollout's response length; we have no config.
DEFAULT_MAX_TOKENS = 256

#: ``LLMServerClient.generate`` adds these on top of the server's fields; the stand-ins replace the client.
_CLIENT_EXTRA_FIELDS: dict[str, Any] = {"global_steps": None, "min_global_steps": None, "max_global_steps": None}


@dataclass(frozen=True)
class SamplingParams:
    """The subset of vLLM sampling params verl's agent loop sends, normalised."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_request(cls, params: Mapping[str, Any]) -> SamplingParams:
        """Accept verl's dict as sent (``max_tokens`` or sglang-style ``max_new_tokens``); ignore other keys."""
        max_tokens = params.get("max_tokens", params.get("max_new_tokens", DEFAULT_MAX_TOKENS))
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (vLLM rejects it too), got {max_tokens}")
        top_k = params.get("top_k", -1)
        return cls(
            max_tokens=int(max_tokens),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=-1 if top_k is None else int(top_k),
            repetition_penalty=float(params.get("repetition_penalty") or 1.0),
            logprobs=bool(params.get("logprobs", False)),
            stop_token_ids=tuple(params.get("stop_token_ids") or ()),
        )


def _pad_runs(token_ids: torch.Tensor, pad_id: int) -> list[int]:
    """Lengths of the maximal runs of ``pad_id``, in order: one run per image in a Qwen2.5-VL prompt."""
    runs: list[int] = []
    for is_pad, group in itertools.groupby(token_ids.tolist(), key=lambda t: t == pad_id):
        if is_pad:
            runs.append(sum(1 for _ in group))
    return runs


class TransformersServer(ImageServer):
    """Serves a local Qwen2.5-VL with ``model.generate``; one request at a time, off the event loop.

    Sampling is seeded from ``seed`` plus the order in which requests arrive, so a sequential rollout is
    reproducible run to run. Like verl's vLLM server it never samples ``<|image_pad|>``/``<|video_pad|>``:
    a stray one would break the image/grid pairing downstream.
    """

    def __init__(
        self, model_path: str | Path, *, device: str = "cpu", seed: int = 0, dtype: torch.dtype = torch.float32
    ):
        self.device = torch.device(device)
        self.seed = seed
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer: PreTrainedTokenizerBase = self.processor.tokenizer
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype).to(self.device)
        self.model.eval()
        config = self.model.config
        self.image_token_id: int = config.image_token_id
        self.video_token_id: int = config.video_token_id
        self.eos_token_id: int = self.tokenizer.eos_token_id
        self._merge_len = self.processor.image_processor.merge_size**2
        self._requests = itertools.count()
        self._lock = threading.Lock()

    async def serve(self, request: ImageRequest) -> TokenOutput:
        """Generate one response; ``prompt_ids`` carry one expanded ``<|image_pad|>`` run per image."""
        params = SamplingParams.from_request(request.sampling_params)
        seed = self.seed + next(self._requests)  # taken on the event loop, so arrival order fixes it
        return await asyncio.to_thread(self._generate_locked, request, params, seed)

    def _generate_locked(self, request: ImageRequest, params: SamplingParams, seed: int) -> TokenOutput:
        with self._lock:
            return self._generate_sync(request, params, seed)

    def _vision_inputs(
        self, input_ids: torch.Tensor, images: list, mm_processor_kwargs: dict[str, Any] | None
    ) -> dict[str, torch.Tensor]:
        """Pixel inputs for ``images``, after checking the prompt reserves exactly their token runs."""
        runs = _pad_runs(input_ids[0], self.image_token_id)
        if not images:
            expected: list[int] = []
            vision: dict[str, torch.Tensor] = {}
        else:
            out = self.processor.image_processor(images=images, return_tensors="pt", **(mm_processor_kwargs or {}))
            expected = (out["image_grid_thw"].prod(-1) // self._merge_len).tolist()
            vision = {
                "pixel_values": out["pixel_values"].to(self.device, self.model.dtype),
                "image_grid_thw": out["image_grid_thw"].to(self.device),
            }
        if runs != expected:
            raise ValueError(
                f"prompt_ids hold <|image_pad|> runs of lengths {runs} (total {sum(runs)}) but the {len(images)} "
                f"images need {expected} (total {sum(expected)}, grid_t*grid_h*grid_w/{self._merge_len} each, in "
                "order); expand each image's placeholder with the same processor before calling generate"
            )
        # transformers 5 only builds Qwen2.5-VL's 3D (mrope) positions when mm_token_type_ids is given.
        mm_types = (input_ids == self.image_token_id).long() + 2 * (input_ids == self.video_token_id).long()
        vision["mm_token_type_ids"] = mm_types
        return vision

    @torch.inference_mode()
    def _generate_sync(self, request: ImageRequest, params: SamplingParams, seed: int) -> TokenOutput:
        input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        vision = self._vision_inputs(input_ids, request.images, request.mm_processor_kwargs)
        do_sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=do_sample,
            temperature=params.temperature if do_sample else None,
            top_p=params.top_p if do_sample else None,
            top_k=max(params.top_k, 0) if do_sample else None,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=[self.eos_token_id, *params.stop_token_ids],
            pad_token_id=self.tokenizer.pad_token_id,
            suppress_tokens=[self.image_token_id, self.video_token_id],
            output_scores=params.logprobs,
            return_dict_in_generate=True,
        )
        devices = [self.device] if self.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                **vision,
            )
        token_ids = out.sequences[0, input_ids.shape[1] :].tolist()
        log_probs = None
        if params.logprobs:
            log_probs = [
                torch.log_softmax(step[0].float(), dim=-1)[tok].item()
                for step, tok in zip(out.scores, token_ids, strict=True)
            ]
        logger.debug(
            "request %s: %d prompt -> %d response tokens", request.request_id, len(request.prompt_ids), len(token_ids)
        )
        return TokenOutput(
            token_ids=token_ids, log_probs=log_probs, stop_reason="completed", extra_fields=dict(_CLIENT_EXTRA_FIELDS)
        )


#: ``policy(prompt_ids, turn_index, request_id) -> assistant text`` for :class:`ScriptedServer`.
ScriptPolicy = Callable[[list[int], int, str], str]


class ScriptedServer(ImageServer):
    """Replays scripted assistant turns as tokens, giving tests deterministic multi-turn dialogues.

    ``policy`` is either a callable or a list of texts that every request replays turn by turn;
    ``turn_index`` counts the calls made so far with the same ``request_id`` (the agent loop keeps one
    id per trajectory). Each text is encoded and closed with ``<|im_end|>`` unless it already ends so.
    ``prompts`` records every prompt received, so tests can assert on what the agent loop sent.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, policy: ScriptPolicy | Sequence[str]):
        self.tokenizer = tokenizer
        self.policy: ScriptPolicy = policy if callable(policy) else self._replay(list(policy))
        self.prompts: list[list[int]] = []
        #: The weights version each output is tagged with, as verl's server client tags it; tests move it.
        self.global_steps: int | None = None
        self._turns: defaultdict[str, int] = defaultdict(int)

    @staticmethod
    def _replay(texts: list[str]) -> ScriptPolicy:
        def policy(prompt_ids: list[int], turn_index: int, request_id: str) -> str:
            if turn_index >= len(texts):
                raise IndexError(f"request {request_id} asked for turn {turn_index} but the script has {len(texts)}")
            return texts[turn_index]

        return policy

    async def serve(self, request: ImageRequest) -> TokenOutput:
        """Encode the policy's next text; truncate at ``max_tokens`` like a length stop would."""
        params = SamplingParams.from_request(request.sampling_params)
        turn = self._turns[request.request_id]
        self._turns[request.request_id] += 1
        self.prompts.append(list(request.prompt_ids))
        text = self.policy(list(request.prompt_ids), turn, request.request_id)
        token_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not token_ids or token_ids[-1] != self.tokenizer.eos_token_id:
            token_ids.append(self.tokenizer.eos_token_id)
        token_ids = token_ids[: params.max_tokens]
        log_probs = [0.0] * len(token_ids) if params.logprobs else None
        version = self.global_steps
        fields = {"global_steps": version, "min_global_steps": version, "max_global_steps": version}
        return TokenOutput(token_ids=token_ids, log_probs=log_probs, stop_reason="completed", extra_fields=fields)
