"""The agent loop outside verl's trainer: the same class, fed by any server with verl's ``generate`` contract.

Evaluation and the demo use this, so they run exactly the dialogue that training optimises; tests and the
actor-update benchmark also turn its outputs into the training batch verl's workers would build.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput,
    AgentLoopWorker,
    DictConfigWrap,
    _InternalAgentLoopOutput,
)
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tokenizer import hf_processor, hf_tokenizer

from sparse_video_r1.env.config import SparseVideoConfig
from sparse_video_r1.serving.base import GenerateServer
from sparse_video_r1.training.agent_loop import SparseVideoAgentLoop


@dataclass(frozen=True)
class Turn:
    """One stretch of a finished dialogue's response: the model's (trained) or the environment's."""

    speaker: str  # "model" or "environment"
    text: str


def make_agent_loop(
    model_path: str | Path,
    server: GenerateServer,
    settings: SparseVideoConfig,
    *,
    prompt_length: int = 2048,
    response_length: int = 4096,
) -> SparseVideoAgentLoop:
    """Build the verl agent loop with the model's own tokenizer and processor, as verl's workers do."""
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": prompt_length, "response_length": response_length},
                "model": {"path": str(model_path)},
            },
            "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
            "sparse_video": asdict(settings),
        }
    )
    return SparseVideoAgentLoop(
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=hf_tokenizer(str(model_path)),
        processor=hf_processor(str(model_path)),
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        hf_model_type="qwen2_5_vl",
    )


def run_dialogues(
    loop: SparseVideoAgentLoop, extra_infos: Iterable[Mapping[str, Any]], sampling_params: Mapping[str, Any]
) -> list[AgentLoopOutput]:
    """Run one dialogue per sample concurrently on the loop's event loop (the one verl bound it to)."""

    async def all_samples() -> list[AgentLoopOutput]:
        runs = [loop.run(dict(sampling_params), extra_info=dict(info)) for info in extra_infos]
        return await asyncio.gather(*runs)

    return loop.loop.run_until_complete(all_samples())


class _PostprocessingWorker:
    """The parts of verl's ``AgentLoopWorker`` that turn loop outputs into a batch, without its Ray actor."""

    _compute_multi_modal_inputs = AgentLoopWorker._compute_multi_modal_inputs
    _compute_position_ids = AgentLoopWorker._compute_position_ids
    _get_mm_processor_kwargs = AgentLoopWorker._get_mm_processor_kwargs
    _compute_score = AgentLoopWorker._compute_score
    _compute_teacher_logprobs = AgentLoopWorker._compute_teacher_logprobs
    _pad_token_ids = AgentLoopWorker._pad_token_ids
    distillation_enabled = False
    reward_loop_worker_handles = None

    def __init__(self, tokenizer: Any, processor: Any, prompt_length: int, response_length: int):
        self.tokenizer, self.processor = tokenizer, processor
        self.rollout_config = OmegaConf.create({"prompt_length": prompt_length, "response_length": response_length})
        self.mm_processor_kwargs: dict[str, Any] = {}


def to_training_batch(
    outputs: list[AgentLoopOutput], tokenizer: Any, processor: Any, prompt_length: int, response_length: int
) -> tuple[list[_InternalAgentLoopOutput], DataProto]:
    """verl's own per-sample post-processing (padding, multimodal inputs, mRoPE positions) and batching.

    Returns the per-sample outputs and the batch, exactly as ``AgentLoopWorker`` hands them to the trainer.
    """
    worker = _PostprocessingWorker(tokenizer, processor, prompt_length, response_length)
    samples = [
        asyncio.run(AgentLoopWorker._agent_loop_postprocess(worker, output, validate=False, raw_prompt=[]))
        for output in outputs
    ]
    batch = AgentLoopWorker._postprocess(worker, samples, input_non_tensor_batch={"index": np.arange(len(outputs))})
    return samples, batch


def image_runs(token_ids: Sequence[int], image_token_id: int) -> int:
    """How many images a stretch of tokens holds: one run of ``<|image_pad|>`` each."""
    return sum(1 for is_pad, _ in itertools.groupby(token_ids, key=lambda t: t == image_token_id) if is_pad)


def split_turns(tokenizer: Any, output: AgentLoopOutput) -> list[Turn]:
    """Decode a response into alternating model / environment turns by its ``response_mask``."""
    turns: list[Turn] = []
    start = 0
    mask = output.response_mask
    for end in range(1, len(mask) + 1):
        if end == len(mask) or mask[end] != mask[start]:
            text = tokenizer.decode(output.response_ids[start:end], skip_special_tokens=True).strip()
            turns.append(Turn("model", text) if mask[start] else Turn("environment", _without_role_names(text)))
            start = end
    return turns


def _without_role_names(text: str) -> str:
    """An environment turn's text without the chat template's role names around it (``user`` ... ``assistant``).

    The environment's tokens run from the end of one assistant turn to the start of the next, so they
    carry the template's ``user`` header and the next ``assistant`` header; special tokens are skipped.
    """
    lines = text.splitlines()
    if lines and lines[0].strip() == "user":
        lines = lines[1:]
    if lines and lines[-1].strip() == "assistant":
        lines = lines[:-1]
    return "\n".join(lines).strip()
