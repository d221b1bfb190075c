"""verl's v1 training-step bookkeeping on a CPU: finished dialogues in, logged metrics and rollout dumps out.

A full GRPO step needs vLLM and a GPU, but what happens to a step's rollouts after generation is plain verl
code that runs anywhere: ``AgentLoopWorkerTQ._agent_loop_postprocess`` scores each dialogue through the reward
loop and puts it into TransferQueue, the configured replay buffer samples the step's batch (returning the
metrics the trainer merges into the step), ``MetricsAggregator`` reduces them, ``Tracking`` logs them and
``PPOTrainer._log_rollout_data`` writes the ``trainer.rollout_data_dir`` dump. :class:`CpuStepRunner` drives
exactly those functions, on stand-ins holding only the attributes they read (as
:mod:`sparse_video_r1.training.standalone` does for the batch post-processing), so tests and the committed example
exercise the metric path of training without a trainer. Not used by training.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Mapping, Sequence
from typing import Any

import transfer_queue as tq
from omegaconf import DictConfig
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.trainer.ppo.v1.utils import MetricsAggregator
from verl.utils.tracking import Tracking

from sparse_video_r1.training.standalone import _PostprocessingWorker

PARTITION = "train"


class _RewardLoopHandle:
    """Stands in for a reward-loop worker actor: ``compute_score.remote(data)`` runs verl's NaiveRewardManager."""

    def __init__(self, manager: NaiveRewardManager) -> None:
        self.compute_score = types.SimpleNamespace(remote=manager.run_single)


class _TransferQueueWorker(_PostprocessingWorker):
    """The parts of ``AgentLoopWorkerTQ`` that score a finished dialogue and put it into TransferQueue."""

    _agent_loop_postprocess = AgentLoopWorkerTQ.__ray_metadata__.modified_class._agent_loop_postprocess


def scoring_worker(config: DictConfig, tokenizer: Any, processor: Any) -> _TransferQueueWorker:
    """A worker whose ``_compute_score`` runs the configured reward through verl's ``NaiveRewardManager``."""
    rollout = config.actor_rollout_ref.rollout
    worker = _TransferQueueWorker(tokenizer, processor, rollout.prompt_length, rollout.response_length)
    reward = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
    worker.reward_loop_worker_handles = [_RewardLoopHandle(reward)]
    worker.loop = reward.loop
    return worker


class CpuStepRunner:
    """Feeds finished dialogues through verl's v1 post-generation path, one training step at a time.

    ``config`` is the composed training config (``configs/sparse_video_grpo.yaml`` with the template's
    overrides): it names the replay buffer (``trainer.v1.sampler``), the reward and the tracker. TransferQueue
    must be initialised (``tq.init()``, on a running Ray) by the caller.
    """

    def __init__(self, config: DictConfig, tokenizer: Any, processor: Any, *, backends: Sequence[str]) -> None:
        self.config = config
        self.worker = scoring_worker(config, tokenizer, processor)
        host = types.SimpleNamespace(
            config=config,
            trainer_mode=config.trainer.v1.trainer_mode,
            _add_prompts_to_generate=lambda count: count,
            tokenizer=tokenizer,
            global_steps=0,
            _write_generations=PPOTrainer._write_generations,
        )
        host._dump_generations = functools.partial(PPOTrainer._dump_generations, host)
        PPOTrainer._init_dump_executor(host)
        self.host = host
        self.replay_buffer = PPOTrainer._build_replay_buffer(host)
        self.tracking = Tracking(
            project_name=config.trainer.project_name,
            experiment_name=config.trainer.experiment_name,
            default_backend=list(backends),
            config=None,
        )

    def put_group(self, uid: str, row: Mapping[str, Any], outputs: Sequence[AgentLoopOutput], step: int) -> None:
        """One prompt's GRPO group, scored and stored as verl's agent-loop worker stores it."""
        tq.kv_put(key=uid, partition_id=PARTITION, tag={"is_prompt": True, "status": "running", "global_steps": step})
        kwargs = {**row, "uid": uid, "global_steps": step}

        async def postprocess_all() -> None:
            for session_id, output in enumerate(outputs):
                await self.worker._agent_loop_postprocess(output, False, **kwargs, session_id=session_id)

        self.worker.loop.run_until_complete(postprocess_all())
        tq.kv_put(key=uid, partition_id=PARTITION, tag={"is_prompt": True, "status": "finished", "global_steps": step})

    def finish_step(self, step: int, prompts: int) -> dict[str, Any]:
        """Sample the step's batch, reduce and log its metrics, dump its rollouts; returns what was logged."""
        batch, metrics = self.replay_buffer.sample(global_steps=step, partition_id=PARTITION, batch_size=prompts)
        aggregator = MetricsAggregator()
        aggregator.add_step_metrics(metrics, sample_count=len(batch.keys))
        logged = {"training/global_step": step, **aggregator.get_aggregated_metrics()}
        rollout_data_dir = self.config.trainer.get("rollout_data_dir", None)
        if rollout_data_dir:
            self.host.global_steps = step
            PPOTrainer._log_rollout_data(self.host, batch, {}, rollout_data_dir)
        self.tracking.log(data=logged, step=step)
        tq.kv_clear(keys=batch.keys, partition_id=batch.partition_id)
        return logged

    def close(self) -> None:
        PPOTrainer._shutdown_dump_executor(self.host)
        self.tracking.finish()


def run_groups(loop: Any, rows: Sequence[Mapping[str, Any]], n: int, sampling_params: Mapping[str, Any]):
    """``n`` dialogues per row (a GRPO group each), concurrently on the loop's event loop, as verl's workers do."""

    async def all_groups() -> list[list[AgentLoopOutput]]:
        groups = [asyncio.gather(*(loop.run(dict(sampling_params), **row) for _ in range(n))) for row in rows]
        return [list(group) for group in await asyncio.gather(*groups)]

    return loop.loop.run_until_complete(all_groups())
