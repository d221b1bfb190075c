"""Save and resume a training checkpoint with verl's real FSDP actor worker on the CPU (run as a script).

tests/test_checkpoint.py runs this under ``torchrun`` (CPU ranks over gloo; alone, it is one rank), in
processes of its own because ``verl_cpu.use_cpu`` makes a process a verl training process for good. It
composes the training config from the template's own overrides (``scripts/run_qwen2_5_vl_template.sh``,
``PRINT_OVERRIDES=1``), builds verl's ``ActorRolloutRefWorker`` (role ``actor``) on the tiny model, and does
what verl's v1 trainer does:

1. one GRPO update, then ``save_checkpoint(<trainer.default_local_dir>/global_step_1/actor, global_step=1)``
   (the template leaves ``default_local_dir`` at verl's ``checkpoints/<project>/<experiment>``);
2. a second update on the same worker (what the run would have done next);
3. a fresh worker built from ``MODEL_PATH`` (as a restarted run builds it) calls
   ``load_checkpoint(<...>/global_step_1/actor)`` like ``PPOTrainer._load_checkpoint`` with
   ``trainer.resume_mode=auto``, and makes the same second update.

Rank 0 writes ``step1_state_dict.pt`` (the actor's full weights when saved, gathered by verl's own
``get_fsdp_full_state_dict``) and ``resume.json`` (what the test asserts on, maxima over all ranks) into ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import actor_update  # noqa: E402  (benchmarks/ is a folder of scripts)
import verl_cpu  # noqa: E402

#: Larger than training's 1e-6 so one update moves every weight past bfloat16's rounding (the merger's dtype).
LEARNING_RATE = 1e-2
STEP_DIR = "global_step_1"


def free_port() -> int:
    """A port for the one-rank gloo group: a fixed one collides with any other verl process on the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def template_overrides(model: str, world_size: int) -> list[str]:
    """The template's overrides for ``model`` on ``world_size`` ranks, each training on 1 question x 2 rollouts."""
    lines = subprocess.run(
        ["bash", str(REPO / "scripts" / "run_qwen2_5_vl_template.sh")],
        env={**os.environ, "PRINT_OVERRIDES": "1", "MODEL_PATH": model, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        *lines,
        f"trainer.n_gpus_per_node={world_size}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={world_size}",  # each rank's whole batch: one Adam step
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        f"actor_rollout_ref.actor.optim.lr={LEARNING_RATE}",
    ]


def full_state_dict(worker: Any) -> dict[str, torch.Tensor]:
    """The actor's whole weights on rank 0 (empty on the others), as verl gathers them to save an HF model."""
    from verl.utils.fsdp_utils import get_fsdp_full_state_dict

    return {k: v.detach().clone() for k, v in get_fsdp_full_state_dict(worker.actor.engine.module).items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over this rank's tensors, then over all ranks."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    local = max((float((a[k].float() - b[k].float()).abs().max()) for k in a), default=0.0)
    return all_ranks_max(local)


def all_ranks_max(value: float) -> float:
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def optimizer_summary(worker: Any) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Adam's step counts and this rank's shard of its moments, flattened to ``index.name`` keys."""
    state = worker.actor.engine.optimizer.state_dict()["state"]
    steps = sorted({float(s["step"]) for s in state.values()})
    moments = {f"{i}.{name}": s[name].clone() for i, s in state.items() for name in ("exp_avg", "exp_avg_sq")}
    return steps, moments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)

    verl_cpu.use_cpu(port=free_port())
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from verl.workers.engine_workers import ActorRolloutRefWorker

    rank, world_size = dist.get_rank(), dist.get_world_size()
    # Every rank builds the same batch (the scripted policy is seeded), as data-parallel ranks of one step.
    settings = actor_update.Settings(model=args.model, device="cpu", questions=1, group=2, repeats=1)
    batch = actor_update.build_batch(settings, work / f"batch_rank{rank}")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="sparse_video_grpo", overrides=template_overrides(args.model, world_size))

    def new_worker() -> tuple[Any, Any]:
        worker = ActorRolloutRefWorker(config=cfg.actor_rollout_ref, role="actor")
        worker.init_model()
        return worker, actor_update._TrainerSteps(cfg, worker)

    worker, trainer = new_worker()
    old, _ = trainer.compute_old_log_prob(batch)
    batch.batch["old_log_probs"] = old.batch["old_log_probs"]
    batch.batch["ref_log_prob"] = old.batch["old_log_probs"]  # the template trains with a KL loss to the reference
    trainer.update_actor(batch)
    # The trainer's layout, under WORK as a run's is under the repository (the template starts it from there).
    actor_dir = work / cfg.trainer.default_local_dir / STEP_DIR / "actor"
    worker.save_checkpoint(str(actor_dir), global_step=1)
    saved = full_state_dict(worker)
    if rank == 0:
        torch.save(saved, work / "step1_state_dict.pt")
    saved_steps, saved_moments = optimizer_summary(worker)
    saved_scheduler = copy.deepcopy(worker.actor.engine.lr_scheduler.state_dict())
    trainer.update_actor(batch)
    continued = full_state_dict(worker)

    resumed, resumed_trainer = new_worker()
    fresh = full_state_dict(resumed)
    resumed.load_checkpoint(str(actor_dir))
    loaded = full_state_dict(resumed)
    loaded_steps, loaded_moments = optimizer_summary(resumed)
    loaded_scheduler = resumed.actor.engine.lr_scheduler.state_dict()
    resumed_trainer.update_actor(batch)
    report = {
        "world_size": world_size,
        "weights_changed_by_update": max_difference(fresh, saved),
        "weights_after_load_vs_saved": max_difference(loaded, saved),
        "optimizer_steps_saved": saved_steps,
        "optimizer_steps_loaded": loaded_steps,
        "optimizer_moments_loaded_vs_saved": max_difference(loaded_moments, saved_moments),
        "lr_scheduler_saved": saved_scheduler["last_epoch"],
        "lr_scheduler_loaded": loaded_scheduler["last_epoch"],
        "second_update_resumed_vs_continued": max_difference(full_state_dict(resumed), continued),
        "second_update_size": max_difference(continued, saved),
        "checkpoint_dir": cfg.trainer.default_local_dir,
        "actor_dir": str(actor_dir.relative_to(work)),
    }
    if rank == 0:
        (work / "resume.json").write_text(json.dumps(report, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
