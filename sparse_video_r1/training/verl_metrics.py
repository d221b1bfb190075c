"""The ``dialogue/…`` metrics in verl's per-step training metrics, through verl's public extension points only.

verl 0.9.1 logs, per training step, what its trainer computes (scores, lengths, timings, the update's losses);
the agent loop's ``extra_fields`` and the reward's extra keys reach only the rollout dumps and validation. Each
trainer has one documented hook whose return value it merges into the step's metrics:

* **v1 trainer** (``trainer.use_v1=True``, the default): the replay buffer. ``PPOTrainer._step_once`` merges the
  metrics that ``ReplayBuffer.sample`` returns into the step's metrics, and ``trainer.v1.sampler.custom_sampler``
  names the class (``configs/sparse_video_grpo.yaml`` sets :func:`dialogue_metrics_replay_buffer`). The sampled
  batch's ``extra_fields`` (the loop's fields, with the reward's under ``reward_extra_info``) and ``extra_info``
  are read back from verl's TransferQueue. Names: ``dialogue/…``.
* **legacy trainer** (``trainer.use_v1=False``): the agent-loop manager
  (``actor_rollout_ref.rollout.agent.agent_loop_manager_class``). ``RayPPOTrainer.fit`` copies the
  ``timing`` dict of ``generate_sequences``' output into the metrics it logs under ``timing_s/`` (verl's own
  ``agent_loop/…`` figures travel the same way), so the names are ``timing_s/dialogue/…``.

Both also write the step's dialogue records (:mod:`sparse_video_r1.training.rollout_dump`) when
``trainer.rollout_data_dir`` is set, for ``python -m sparse_video_r1.tools.viewer rollouts``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import transfer_queue as tq
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopManager
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.utils.tokenizer import hf_tokenizer

from sparse_video_r1.training import rollout_dump
from sparse_video_r1.training.dialogue_metrics import dialogue_metrics, dialogue_record

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"


class DialogueStepReport:
    """Turns one step's trajectories into ``dialogue/…`` metrics and, with a dump folder, dialogue records."""

    def __init__(self, rollout_data_dir: str | None = None, tokenizer_path: str | None = None) -> None:
        self.rollout_data_dir = rollout_data_dir or None
        self.tokenizer_path = tokenizer_path
        if self.rollout_data_dir and not tokenizer_path:
            raise ValueError("writing dialogue records needs the tokenizer's path (actor_rollout_ref.model.path)")
        self._written_steps: set[int] = set()

    @property
    def dumps(self) -> bool:
        return self.rollout_data_dir is not None

    @functools.cached_property
    def tokenizer(self) -> Any:
        return hf_tokenizer(self.tokenizer_path)

    def report(
        self,
        step: int,
        uids: Sequence[str],
        fields: Sequence[Mapping[str, Any]],
        extra_infos: Sequence[Mapping[str, Any]],
        responses: Sequence[tuple[list[int], list[int]]] = (),
    ) -> dict[str, float]:
        """``fields[i]``: the loop's extra fields with the reward's keys under ``reward_extra_info``;
        ``responses[i]``: (response ids, response mask), needed only when records are written."""
        rewards = [dict(f.get("reward_extra_info") or {}) for f in fields]
        records = [
            dialogue_record(f, reward, info) for f, reward, info in zip(fields, rewards, extra_infos, strict=True)
        ]
        if self.dumps and responses:
            image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
            dialogues = [
                rollout_dump.rollout_record(
                    uid, step, f, reward, info, rollout_dump.response_turns(self.tokenizer, ids, mask, image_token_id)
                )
                for uid, f, reward, info, (ids, mask) in zip(uids, fields, rewards, extra_infos, responses, strict=True)
            ]
            rollout_dump.write_records(self.rollout_data_dir, step, dialogues, append=step in self._written_steps)
            self._written_steps.add(step)
        return dialogue_metrics(records)


def _column(data: Any, key: str) -> list[Any]:
    """A TransferQueue field as a list (numpy, tensordict's NonTensorStack or a list, by backend)."""
    value = data[key]
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _DialogueMetricsSampling:
    """Adds the ``dialogue/…`` metrics of every training batch to what verl's ``ReplayBuffer.sample`` returns."""

    report: DialogueStepReport

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        batch, metrics = super().sample(global_steps, partition_id, batch_size)  # type: ignore[misc]
        if partition_id == "train" and batch.keys:
            try:
                metrics.update(self._dialogue_metrics(batch, global_steps))
            except Exception:  # a metric must never stop training
                logger.exception("dialogue metrics of step %d failed; the step goes on without them", global_steps)
        return batch, metrics

    def _dialogue_metrics(self, batch: Any, step: int) -> dict[str, float]:
        names = ["extra_fields", "extra_info"] + (["responses", "response_mask"] if self.report.dumps else [])
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=names)
        fields = [_mapping(f) for f in _column(data, "extra_fields")]
        infos = [_mapping(info) for info in _column(data, "extra_info")]
        responses: list[tuple[list[int], list[int]]] = []
        if self.report.dumps:
            ids = [t.tolist() for t in data["responses"].unbind()]
            masks = [t.tolist() for t in data["response_mask"].unbind()]
            responses = list(zip(ids, masks, strict=True))
        return self.report.report(step, list(batch.keys), fields, infos, responses)


class DialogueMetricsReplayBuffer(_DialogueMetricsSampling, ReplayBuffer):
    """verl's synchronous replay buffer (``trainer.v1.trainer_mode=sync``) reporting dialogue metrics."""


class DialogueMetricsReplayBufferAsync(_DialogueMetricsSampling, ReplayBufferAsync):
    """verl's asynchronous replay buffer (``colocate_async`` / ``separate_async``) reporting dialogue metrics."""


def dialogue_metrics_replay_buffer(
    *, trainer_mode: str, sampler_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
) -> ReplayBuffer:
    """The ``trainer.v1.sampler.custom_sampler`` entry: verl's replay buffer for ``trainer_mode``, as verl
    would pick it, reporting dialogue metrics.

    ``sampler_kwargs`` (``trainer.v1.sampler.sampler_kwargs``) may hold ``rollout_data_dir`` and
    ``tokenizer_path`` for the dialogue records. verl hands a custom sampler no DAPO group filter
    (``algorithm.filter_groups``) nor ``sync_refill_failed_groups``: this project uses neither.
    """
    settings = dict(sampler_kwargs or {})
    cls = DialogueMetricsReplayBuffer if trainer_mode == "sync" else DialogueMetricsReplayBufferAsync
    buffer = cls(trainer_mode=trainer_mode, sampler_kwargs=sampler_kwargs, **kwargs)
    buffer.report = DialogueStepReport(settings.get("rollout_data_dir"), settings.get("tokenizer_path"))
    return buffer


class DialogueMetricsAgentLoopManager(AgentLoopManager):
    """verl's agent-loop manager for the legacy trainer, adding ``timing_s/dialogue/…`` metrics to training steps.

    Set ``actor_rollout_ref.rollout.agent.agent_loop_manager_class=sparse_video_r1.training.verl_metrics.
    DialogueMetricsAgentLoopManager`` with ``trainer.use_v1=False`` only: the v1 trainer reads the same key for
    its own TransferQueue manager.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.config.actor_rollout_ref.model
        self.report = DialogueStepReport(
            self.config.trainer.get("rollout_data_dir", None), model.get("tokenizer_path", None) or model.path
        )

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        output = super().generate_sequences(prompts)
        if not prompts.meta_info.get("validate", False):
            try:
                metrics = legacy_step_metrics(self.report, output, prompts)
                output.meta_info.setdefault("timing", {}).update(metrics)
            except Exception:  # a metric must never stop training
                logger.exception("dialogue metrics of a training batch failed; the step goes on without them")
        return output


def legacy_step_metrics(report: DialogueStepReport, output: DataProto, prompts: DataProto) -> dict[str, float]:
    """The dialogue metrics of the legacy agent-loop manager's output batch (rows in ``prompts``' order).

    verl's ``AgentLoopWorker._postprocess`` spreads each loop field and each reward key into its own
    ``non_tensor_batch`` column; the row's ``extra_info`` stays in the input batch.
    """
    columns = output.non_tensor_batch
    rows = len(output)
    fields = []
    for i in range(rows):
        row = {key: column[i] for key, column in columns.items()}
        fields.append({**row, "reward_extra_info": row})
    infos: list[Mapping[str, Any]] = [{}] * rows
    source = prompts.non_tensor_batch.get("extra_info")
    if source is not None and len(source) == rows:
        infos = [_mapping(info) for info in source]
    uids = prompts.non_tensor_batch.get("uid")
    names = [f"{uids[i]}_{i}" if uids is not None and len(uids) == rows else str(i) for i in range(rows)]
    responses: list[tuple[list[int], list[int]]] = []
    if report.dumps:
        width = output.batch["responses"].shape[1]
        lengths = output.batch["attention_mask"][:, -width:].sum(dim=1).tolist()
        for i, length in enumerate(lengths):
            ids = output.batch["responses"][i, :length].tolist()
            responses.append((ids, output.batch["response_mask"][i, :length].tolist()))
    step = int(prompts.meta_info.get("global_steps", 0))
    return report.report(step, names, fields, infos, responses)
