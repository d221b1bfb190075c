"""The training template's exact hydra overrides compose against the installed verl config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import script_env
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sparse_video_r1.env.config import AGENT_NAME, DialogueRules, RewardConfig, SparseVideoConfig, from_mapping

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "scripts" / "run_qwen2_5_vl_template.sh"


def template_overrides(*extra: str, **env: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(TEMPLATE), *extra],
        env=script_env(PRINT_OVERRIDES="1", **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def compose_training_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="sparse_video_grpo", overrides=overrides)


def test_template_overrides_compose_into_a_grpo_config_with_our_loop_and_reward():
    cfg = compose_training_config(template_overrides(MAX_TOTAL_FRAMES="12", MODEL_PATH="/models/qwen"))
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo"
    assert rollout.name == "vllm"
    assert rollout.agent.default_agent_loop == AGENT_NAME
    assert rollout.limit_images == 12, "vLLM's image limit must follow the dialogue's frame budget"
    assert cfg.actor_rollout_ref.model.path == "/models/qwen"
    assert cfg.reward.custom_reward_function.path == "pkg://sparse_video_r1.training.reward"
    settings = SparseVideoConfig.from_mapping(OmegaConf.to_container(cfg.sparse_video))
    assert settings.dialogue.max_total_frames == 12
    from_mapping(RewardConfig, OmegaConf.to_container(cfg.reward.custom_reward_function.reward_kwargs))


def test_agent_loop_registry_file_names_our_class():
    entries = OmegaConf.load(ROOT / "configs" / "agent_loops.yaml")
    assert [(e.name, e._target_) for e in entries] == [
        (AGENT_NAME, "sparse_video_r1.training.agent_loop.SparseVideoAgentLoop")
    ]
    cfg = compose_training_config(template_overrides())
    assert Path(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path) == ROOT / "configs" / "agent_loops.yaml"


@pytest.mark.parametrize(
    "bad_override",
    [
        "actor_rollout_ref.rollout.limit_imgs=4",
        "sparse_video.dialogue.max_frame=3",
        "sparse_video.max_turns=3",
        "trainer.n_gpu_per_node=2",
    ],
)
def test_misspelled_keys_are_rejected(bad_override: str):
    with pytest.raises(ConfigCompositionException):
        compose_training_config(template_overrides(bad_override))


def test_unknown_dialogue_key_in_the_config_is_rejected_by_name():
    with pytest.raises(ValueError, match="max_frame"):
        from_mapping(DialogueRules, {"max_frame": 3})
    with pytest.raises(ValueError, match="DecodingConfig keys \\['max_turns'\\]"):
        SparseVideoConfig.from_mapping({"decoding": {"max_turns": 3}})
    with pytest.raises(ValueError, match="sections \\['max_turns'\\]"):
        SparseVideoConfig.from_mapping({"max_turns": 3})


@pytest.mark.parametrize(
    ("attention", "remove_padding"), [("sdpa", False), ("eager", False), ("flash_attention_2", True)]
)
def test_attention_falls_back_without_flash_attn_and_composes(attention: str, remove_padding: bool):
    result = subprocess.run(
        ["bash", str(TEMPLATE)],
        env=script_env(PRINT_OVERRIDES="1", ATTENTION=attention),
        capture_output=True,
        text=True,
        check=True,
    )
    cfg = compose_training_config(result.stdout.splitlines())
    model = cfg.actor_rollout_ref.model
    assert model.use_remove_padding is remove_padding
    assert model.use_fused_kernels is True
    assert model.override_config.get("attn_implementation", "flash_attention_2") == attention
    assert ("attention: " in result.stderr) is not remove_padding  # one logged line when falling back


def test_the_attention_default_follows_whether_flash_attn_imports():
    import importlib.util

    has_flash_attn = importlib.util.find_spec("flash_attn") is not None
    cfg = compose_training_config(template_overrides())
    assert cfg.actor_rollout_ref.model.use_remove_padding is has_flash_attn


def test_default_tracker_is_local_and_the_v1_sampler_reports_dialogue_metrics():
    from verl.utils.import_utils import load_extern_object

    from sparse_video_r1.training.verl_metrics import dialogue_metrics_replay_buffer

    cfg = compose_training_config(template_overrides(MODEL_PATH="/models/qwen", RUN_DIR="/runs/a"))
    assert list(cfg.trainer.logger) == ["console", "tensorboard"]
    assert cfg.trainer.use_v1 and cfg.trainer.rollout_data_dir == "/runs/a/rollouts"
    sampler = cfg.trainer.v1.sampler
    assert (
        load_extern_object(sampler.custom_sampler.path, sampler.custom_sampler.name) is dialogue_metrics_replay_buffer
    )
    assert sampler.sampler_kwargs.rollout_data_dir == "/runs/a/rollouts"
    assert sampler.sampler_kwargs.tokenizer_path == "/models/qwen"
    wandb = compose_training_config(template_overrides(LOGGER='["console","wandb"]', ROLLOUT_DATA_DIR=""))
    assert list(wandb.trainer.logger) == ["console", "wandb"]
    assert wandb.trainer.rollout_data_dir is None and wandb.trainer.v1.sampler.sampler_kwargs.rollout_data_dir is None
