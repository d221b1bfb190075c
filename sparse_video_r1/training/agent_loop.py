"""verl agent loop: the model asks for frames, we show them, and verl trains on the whole dialogue.

Every assistant turn stays in the token stream with ``response_mask`` 1, each one conditioned on exactly
the frames shown before it; the environment's turns (frames and notes) get ``response_mask`` 0. Tokens are
never re-templated: verl's Continuous Token helpers append each turn to the running ids, as verl's
``ToolAgentLoop`` does for images returned by tools.

Registered for verl through ``configs/agent_loops.yaml`` (``_target_: sparse_video_r1.training.agent_loop.
SparseVideoAgentLoop``) under :data:`~sparse_video_r1.env.config.AGENT_NAME`; the dialogue settings come from
the trainer config key ``sparse_video`` (see :class:`~sparse_video_r1.env.config.SparseVideoConfig`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import uuid4

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op

from sparse_video_r1.env.config import SparseVideoConfig
from sparse_video_r1.env.dialogue import Episode, Observation, VideoQA
from sparse_video_r1.env.frames import VideoError, shared_decoder

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Room kept for a final short answer turn when deciding whether another observation still fits.
ANSWER_ROOM_TOKENS = 32

#: Special tokens that only the environment may write: each stands for (part of) an image or video.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class _Tokens:
    """The running token stream of one dialogue, as verl's Continuous Token helpers maintain it.

    The dialogue itself (its messages, the images shown, how it ended) is the :class:`Episode`'s.
    """

    ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    #: The server's ``TokenOutput.extra_fields`` (weights version tags), kept as verl's own loops keep them.
    server_fields: dict[str, Any] = field(default_factory=dict)

    def record_server_fields(self, fields: Mapping[str, Any]) -> None:
        """Keep the first turn's fields and the last turn's weights version, as verl's ``ToolAgentLoop`` does.

        verl's v1 trainer reads ``min_global_steps``/``max_global_steps`` of every sample (the weights
        versions a dialogue was generated with) and fails on a sample that lacks them.
        """
        if not self.server_fields:
            self.server_fields.update(fields)
        elif fields.get("max_global_steps") is not None:
            self.server_fields["max_global_steps"] = fields["max_global_steps"]


class SparseVideoAgentLoop(AgentLoopBase):
    """Multi-turn adaptive-frame dialogue over one video question."""

    def __init__(self, *args: Any, sparse_video: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = sparse_video if sparse_video is not None else self.config.get("sparse_video", None)
        self.settings = SparseVideoConfig.from_mapping(settings)
        self.dialogue = self.settings.dialogue
        self.response_length: int = self.rollout_config.response_length
        self.sampler, self.decode_pool = shared_decoder(self.settings.decoding)
        self.end_of_turn_ids = _end_of_turn_ids(self.tokenizer)
        self.vision_token_ids = vision_token_ids(self.tokenizer)

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any) -> AgentLoopOutput:
        # 1. The sample's dialogue, and the token stream that renders it.
        sample = VideoQA.from_extra_info(kwargs.get("extra_info") or {})
        episode = Episode(sample, self.dialogue, self.sampler)
        tokens = _Tokens()
        timing = {"generate_sequences": 0.0, "tool_calls": 0.0}
        # 2. Play it; a fault ends this sample (the episode records why), never the batch.
        try:
            await self._play(episode, tokens, sampling_params, timing, int(priority))
        except VideoError as error:
            logger.warning("sample %s: %s", sample.qid, error)
            episode.fail(error)
        except Exception as error:
            logger.exception("sample %s (%s) failed; it is kept with stop_reason=error", sample.qid, sample.video_path)
            episode.fail(error)
        # 3. A sample that ended before its first turn still needs a prompt.
        if not tokens.ids:
            await self._open_without_video(episode, tokens)
        # 4. The weights version of a sample that never reached the model.
        if tokens.server_fields.get("min_global_steps") is None and kwargs.get("global_steps") is not None:
            # verl's v1 sync trainer rolls out step k with the weights it synced after step k-1
            # (``update_weights(global_steps)`` at each step's end), so that is the version this sample would have used.
            version = int(kwargs["global_steps"]) - 1
            tokens.server_fields.update(min_global_steps=version, max_global_steps=version)
        # 5. verl's output.
        return self._output(episode, tokens, timing, want_logprobs=bool(sampling_params.get("logprobs")))

    async def _play(
        self,
        episode: Episode,
        tokens: _Tokens,
        sampling_params: dict[str, Any],
        timing: dict[str, float],
        priority: int = 0,
    ) -> None:
        """Turn the episode's dialogue into tokens and the model's tokens back into turns, until it ends."""
        messages = await self._in_pool(timing, episode.start)
        self._assert_mm_supported(True)
        ids = await self._initial_tokens(messages, episode.images)
        episode.fit_opening(ids is not None)
        if ids is None:
            return
        tokens.ids = ids
        request_id = uuid4().hex
        while not episode.done:
            room = self.response_length - len(tokens.response_mask)
            params = {**sampling_params, "max_tokens": min(self.dialogue.max_tokens_per_turn, room)}
            with simple_timer("generate_sequences", timing):
                output = await self.server_manager.generate(
                    request_id=request_id,
                    prompt_ids=tokens.ids,
                    sampling_params=params,
                    image_data=episode.images,
                    priority=priority,
                )
            tokens.record_server_fields(output.extra_fields)
            token_ids, log_probs, removed = cut_at_vision_tokens(
                output.token_ids, output.log_probs, self.vision_token_ids
            )
            await self._append_assistant(tokens, token_ids, log_probs)
            judge = functools.partial(
                episode.step,
                self.tokenizer.decode(token_ids, skip_special_tokens=True),
                truncated=not token_ids or token_ids[-1] not in self.end_of_turn_ids,
                vision_tokens=removed,
            )
            observation = await self._in_pool(timing, judge)
            if observation is not None:
                episode.show(observation, fits=await self._append_observation(tokens, episode.messages, observation))

    async def _append_assistant(self, tokens: _Tokens, token_ids: list[int], log_probs: list[float] | None) -> None:
        keep_logprobs = bool(tokens.logprobs or log_probs)
        merged, mask, logprobs = await self.ct_merge_assistant_token(
            tokens.ids,
            token_ids,
            tokens.response_mask,
            tokens.logprobs if keep_logprobs else None,
            assistant_logprobs=log_probs or None,
        )
        tokens.ids, tokens.response_mask = merged.token_ids, mask
        tokens.logprobs = logprobs or []

    async def _append_observation(
        self, tokens: _Tokens, messages: list[dict[str, Any]], observation: Observation
    ) -> bool:
        """Append the user turn with the new frames after ``messages``; refuse (False) if it would overflow.

        A multimodal context is never truncated: cutting through image placeholders breaks the
        image-feature alignment, so the episode ends instead (:meth:`Episode.show`).
        """
        merged, mask, logprobs = await self.ct_merge_context_msg(
            messages, [*messages, observation.message], tokens.ids, tokens.response_mask, tokens.logprobs or None
        )
        if len(mask) + ANSWER_ROOM_TOKENS > self.response_length:
            return False
        tokens.ids, tokens.response_mask, tokens.logprobs = merged.token_ids, mask, logprobs or []
        return True

    async def _initial_tokens(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> list[int] | None:
        """The opening prompt's token ids, or None when they exceed ``rollout.prompt_length``.

        verl's ``ct_build_initial_tokens`` raises a bare ValueError on such a prompt (a multimodal prompt
        cannot be cut without breaking the image-feature alignment). Building with the same builder and
        measuring here lets the sample end as ``context_limit`` instead of an anonymous ``error``.
        """
        build = functools.partial(self.continuous_token_builder.build_initial_tokens, messages, images=images)
        ids = await self.loop.run_in_executor(None, build)
        return ids if len(ids) <= self.rollout_config.prompt_length else None

    async def _open_without_video(self, episode: Episode, tokens: _Tokens) -> None:
        """Give a sample that ended before its first turn a valid, gradient-free prompt: a blank frame and the question.

        Keeping one image keeps every sample of the batch multimodal, which verl's actor needs to
        concatenate ``multi_modal_inputs`` across a micro-batch. A question too long for the prompt even
        without frames is left out, so one oversized row cannot fail the whole batch.
        """
        ids = await self._initial_tokens(episode.open_blank(), episode.images)
        if ids is None:
            ids = await self._initial_tokens(episode.open_blank(with_question=False), episode.images)
        if ids is None:
            raise ValueError(
                f"rollout.prompt_length={self.rollout_config.prompt_length} cannot hold even one blank frame; raise it"
            )
        tokens.ids = ids

    def _output(
        self, episode: Episode, tokens: _Tokens, timing: dict[str, float], *, want_logprobs: bool
    ) -> AgentLoopOutput:
        response_mask, logprobs = tokens.response_mask, tokens.logprobs
        if episode.failed:
            # The environment failed, not the model: the turns it wrote before the fault keep their
            # tokens (shapes stay as verl expects) but get no gradient from the zero reward.
            response_mask = [0] * len(response_mask)
        elif self.settings.training.loss_on == "last_turn":
            response_mask = only_last_turn(response_mask)
        if response_mask:
            prompt_ids, response_ids = tokens.ids[: -len(response_mask)], tokens.ids[-len(response_mask) :]
        else:
            # The sample ended before the model spoke: one masked pad token keeps the batch's shapes uniform.
            prompt_ids, response_ids, response_mask = tokens.ids, [self.tokenizer.pad_token_id], [0]
            logprobs = [0.0] if want_logprobs else []
        summary = {**tokens.server_fields, **episode.summary()}
        summary["env_seconds"] = timing["tool_calls"]
        summary["vision_tokens_removed"] = episode.vision_tokens_removed
        observations = sum(1 for message in episode.messages[2:] if message["role"] == "user")
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=response_mask[: self.response_length],
            response_logprobs=logprobs[: self.response_length] if logprobs else None,
            multi_modal_data={"images": episode.images},
            num_turns=1 + episode.turns + observations,
            metrics=AgentLoopMetrics(**timing),
            extra_fields=summary,
        )

    async def _in_pool(self, timing: dict[str, float], fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking environment work (decoding, resizing) off the event loop, timing it as ``tool_calls``.

        Timed by hand, not with verl's ``simple_timer``: that drops the time of a block that raises, and the
        time a failed decode took (a timeout) is what ``env_seconds`` must show.
        """
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)
        finally:
            timing["tool_calls"] += time.perf_counter() - started


def only_last_turn(response_mask: list[int]) -> list[int]:
    """Keep the loss on the final assistant turn only: the last run of 1s survives, earlier runs become 0."""
    end = len(response_mask)
    while end and not response_mask[end - 1]:
        end -= 1
    start = end
    while start and response_mask[start - 1]:
        start -= 1
    return [0] * start + response_mask[start:end] + [0] * (len(response_mask) - end)


def cut_at_vision_tokens(
    token_ids: list[int], log_probs: list[float] | None, vision_ids: frozenset[int]
) -> tuple[list[int], list[float] | None, int]:
    """Cut a generated turn before its first vision special token; return the kept part and the count removed.

    A model can *generate* ``<|image_pad|>`` and its kin (EasyR1 #110, verl #3469). Left in the stream,
    verl's post-processing re-runs the processor on the decoded text and finds more image placeholders
    than images, which fails the batch (or, worse, misaligns features). The tokens before the first one
    are the model's and stay trained; the turn then ends the dialogue as ``invalid_turn``.
    """
    for position, token in enumerate(token_ids):
        if token in vision_ids:
            kept_logprobs = log_probs[:position] if log_probs else log_probs
            return list(token_ids[:position]), kept_logprobs, len(token_ids) - position
    return list(token_ids), log_probs, 0


def vision_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the Qwen-VL vision special tokens this tokenizer knows (see :data:`VISION_SPECIAL_TOKENS`)."""
    ids = {tokenizer.convert_tokens_to_ids(token) for token in VISION_SPECIAL_TOKENS}
    return frozenset(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def _end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return frozenset(i for i in ids if i is not None)
