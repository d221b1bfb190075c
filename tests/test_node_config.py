"""The template's multi-GPU settings compose and pass verl's own launch validation (no GPU needed).

The users' node (4 GPUs, ``N_GPUS=4``), the 7B line of the template (``ROLLOUT_TP=2 PARAM_OFFLOAD=True``), two
nodes (``NNODES=2``) and the one-GPU host of the real-size run: each is composed from the template's exact
overrides and handed to ``verl.utils.config.validate_config``, what ``python -m verl.trainer.main_ppo`` runs
first (batch divisibility by the GPU count, micro-batch settings, the actor's own checks).
"""

from __future__ import annotations

import pytest
from test_launch_config import compose_training_config, template_overrides
from verl.trainer.main_ppo import need_critic, need_reference_policy
from verl.utils.config import validate_config

#: name -> (template environment, expected GPUs per node, nodes, rollout tensor parallel size, offload)
NODES = {
    "4 GPUs, 3B (the template's defaults)": ({}, 4, 1, 1, False),
    "4 GPUs, 7B": (
        {"MODEL_PATH": "Qwen/Qwen2.5-VL-7B-Instruct", "ROLLOUT_TP": "2", "PARAM_OFFLOAD": "True"},
        4,
        1,
        2,
        True,
    ),
    "2 nodes x 4 GPUs": ({"NNODES": "2"}, 4, 2, 1, False),
    "1 GPU, 7B, 8 questions (the planned 7B run)": (
        {
            "N_GPUS": "1",
            "TRAIN_BATCH_SIZE": "8",
            "PPO_MINI_BATCH_SIZE": "8",
            "GPU_MEMORY_UTILIZATION": "0.35",
            "PARAM_OFFLOAD": "True",
        },
        1,
        1,
        1,
        True,
    ),
    "1 GPU, 8 questions (the real-size run)": (
        {"N_GPUS": "1", "TRAIN_BATCH_SIZE": "8", "PPO_MINI_BATCH_SIZE": "8", "GPU_MEMORY_UTILIZATION": "0.35"},
        1,
        1,
        1,
        False,
    ),
}


@pytest.mark.parametrize("name", list(NODES))
def test_template_node_settings_pass_verls_launch_validation(name: str) -> None:
    env, gpus, nodes, tp, offload = NODES[name]
    cfg = compose_training_config(template_overrides(**env))
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes) == (gpus, nodes)
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == tp
    assert cfg.actor_rollout_ref.actor.fsdp_config.param_offload is offload
    assert cfg.actor_rollout_ref.actor.fsdp_config.optimizer_offload is offload
    assert (gpus * nodes) % tp == 0, "vLLM replicas of ROLLOUT_TP GPUs must tile the node"
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_a_batch_that_does_not_divide_over_the_gpus_is_refused_before_launch() -> None:
    """The check above has teeth: 3 questions x 1 dialogue cannot split over 4 GPUs."""
    cfg = compose_training_config(template_overrides(TRAIN_BATCH_SIZE="3", ROLLOUT_N="1", PPO_MINI_BATCH_SIZE="3"))
    with pytest.raises(AssertionError, match="divisible"):
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_the_one_gpu_7b_run_with_bfloat16_states_passes_launch_validation() -> None:
    """7B on one H200 with 128 GiB of host RAM: float32 actor states (8.29 B x 16 B = 123.6 GiB) fit neither the GPU
    in the update nor the host once offloaded (FSDP2's CPUOffloadPolicy included), so train_realsize.sh's
    STATE_DTYPE=bfloat16 loads actor and reference in bfloat16 (8 B a parameter: 61.8 GiB) beside PARAM_OFFLOAD."""
    env = {
        "N_GPUS": "1",
        "TRAIN_BATCH_SIZE": "4",
        "PPO_MINI_BATCH_SIZE": "4",
        "GPU_MEMORY_UTILIZATION": "0.35",
        "PARAM_OFFLOAD": "True",
    }
    states = [
        "actor_rollout_ref.actor.fsdp_config.model_dtype=bfloat16",
        "actor_rollout_ref.ref.fsdp_config.model_dtype=bfloat16",
    ]
    cfg = compose_training_config(template_overrides(**env) + states)
    assert cfg.actor_rollout_ref.actor.fsdp_config.model_dtype == "bfloat16"
    assert cfg.actor_rollout_ref.ref.fsdp_config.model_dtype == "bfloat16"
    assert cfg.actor_rollout_ref.actor.fsdp_config.param_offload is True
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
