"""From a training checkpoint to an evaluation, and a resumed run, at the tiny size on CPU.

A module fixture runs tests/_checkpoint_worker.py on 2 CPU ranks (torchrun, gloo): verl's real FSDP actor
worker, composed from the training template's overrides, makes one GRPO update and saves the checkpoint the
trainer saves (``<trainer.default_local_dir>/global_step_1/actor``, one shard per rank), then fresh workers
resume from it. The tests check that verl's model merger, run exactly as the README tells users, turns that
checkpoint into the HF directory ``scripts/evaluate.sh`` takes, and that the resumed workers continue exactly
where the saved ones were.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_launch_config import compose_training_config, template_overrides
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from sparse_video_r1.data import preprocess_split, read_nextqa_split
from sparse_video_r1.synthetic.nextqa import write_nextqa_like_release
from sparse_video_r1.tools import evaluate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "nextqa"
#: Data-parallel CPU ranks (gloo): FSDP shards every weight across them, as across a node's GPUs.
RANKS = 2


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The work folder holding ``checkpoints/global_step_1/actor`` and the worker's resume report."""
    work = tmp_path_factory.mktemp("checkpoint")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}"]
    command = [*torchrun, str(ROOT / "tests" / "_checkpoint_worker.py"), "--model", str(tiny_model_dir)]
    result = subprocess.run([*command, "--work", str(work)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, json.loads((work / "resume.json").read_text())


def merged_name(report: dict[str, Any]) -> str:
    """Where the README puts the HF model of step N: ``<checkpoint dir>/hf_step_N``."""
    return f"{report['checkpoint_dir']}/hf_step_1"


def merge_as_the_readme_says(work: Path, actor_dir: str, target: str) -> None:
    """``python -m verl.model_merger merge --backend fsdp --local_dir ACTOR_DIR --target_dir TARGET``."""
    command = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    result = subprocess.run(
        [*command, "--local_dir", actor_dir, "--target_dir", target], capture_output=True, text=True, cwd=work
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_verls_merger_turns_the_checkpoint_into_the_hf_model_that_was_trained(
    checkpoint: tuple[Path, dict[str, Any]], tiny_model_dir: Path
) -> None:
    work, report = checkpoint
    actor_dir = work / report["actor_dir"]
    # What the trainer's FSDP checkpoint holds: per-rank shards and an HF folder without weights.
    shards = {f"{kind}_world_size_{RANKS}_rank_{rank}.pt" for kind in ("model", "optim", "extra_state")
              for rank in range(RANKS)}  # fmt: skip
    assert {p.name for p in actor_dir.iterdir()} == {*shards, "fsdp_config.json", "huggingface"}
    assert not list((actor_dir / "huggingface").glob("*.safetensors"))
    assert report["world_size"] == RANKS

    assert report["checkpoint_dir"] == "checkpoints/sparse_video_r1/qwen2_5_vl_grpo_nextqa"  # the template's
    merge_as_the_readme_says(work, report["actor_dir"], merged_name(report))
    merged_dir = work / merged_name(report)
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged_dir)
    trained = torch.load(work / "step1_state_dict.pt")
    weights = merged.state_dict()
    assert weights.keys() == trained.keys()
    # The merger writes bfloat16: every weight is the trained fp32 weight, rounded once.
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert all(torch.equal(weights[name], trained[name].to(torch.bfloat16)) for name in trained)
    initial = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).state_dict()
    unchanged = [name for name in trained if torch.equal(weights[name], initial[name])]
    assert not unchanged, f"the merged model is not the trained one: {unchanged} kept their initial values"

    # The processor, tokenizer and chat template evaluation needs are copied from the checkpoint's huggingface/.
    processor, original = AutoProcessor.from_pretrained(merged_dir), AutoProcessor.from_pretrained(tiny_model_dir)
    assert processor.chat_template == original.chat_template
    assert processor.tokenizer.get_vocab() == original.tokenizer.get_vocab()
    assert processor.image_processor.to_dict() == original.image_processor.to_dict()  # patch size, pixel bounds
    assert (merged_dir / "generation_config.json").is_file()


def test_the_merged_directory_runs_through_the_evaluator(
    checkpoint: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """What ``scripts/evaluate.sh`` runs, on the transformers backend: the adaptive dialogue and a baseline."""
    work, report = checkpoint
    merged_dir = work / merged_name(report)
    if not merged_dir.is_dir():
        merge_as_the_readme_says(work, report["actor_dir"], merged_name(report))
    write_nextqa_like_release(FIXTURES, tmp_path / "raw", {"val": "val.csv"}, videos_per_split=1, max_seconds=8.0)
    data = preprocess_split(read_nextqa_split(tmp_path / "raw", "val"), tmp_path / "data").output
    out = tmp_path / "eval"
    dialogue = ["--initial-frames", "2", "--max-frames-per-request", "2", "--max-total-frames", "4", "--max-turns", "2"]
    flags = ["--backend", "transformers", "--uniform", "2", "--limit", "2", "--max-tokens-per-turn", "8", *dialogue]
    evaluate.main(["--model", str(merged_dir), "--data", str(data), "--out", str(out), *flags])
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["model"] == str(merged_dir.resolve())
    metrics = {name: method["metrics"] for name, method in results["methods"].items()}
    assert {name: m["n"] for name, m in metrics.items()} == {"adaptive": 2, "uniform_2": 2}
    for m in metrics.values():  # the random model's turns end in some recorded way, never in an error
        assert sum(m["stop_reasons"].values()) == 2 and "error" not in m["stop_reasons"]
    assert all(record["frames_used"] == 2 for record in map(json.loads, (out / "records_uniform_2.jsonl").open()))


def test_a_resumed_worker_continues_exactly_where_the_saved_one_was(checkpoint: tuple[Path, dict[str, Any]]) -> None:
    """verl's ``load_checkpoint``, as ``trainer.resume_mode=auto`` calls it, restores weights, Adam and the schedule.

    The fresh workers start from ``MODEL_PATH`` like a restarted run; after loading their shards, their next
    update is the update the saved workers made (bit for bit on CPU).
    """
    _, report = checkpoint
    assert report["weights_changed_by_update"] > 1e-3  # the fresh worker really starts elsewhere
    assert report["weights_after_load_vs_saved"] == 0.0
    assert report["optimizer_steps_saved"] == report["optimizer_steps_loaded"] == [1.0]
    assert report["optimizer_moments_loaded_vs_saved"] == 0.0
    assert report["lr_scheduler_saved"] == report["lr_scheduler_loaded"] == 1
    assert report["second_update_size"] > 1e-3
    assert report["second_update_resumed_vs_continued"] == 0.0


def test_the_template_saves_every_50_steps_where_a_rerun_resumes_from() -> None:
    """What the README states about resuming, read from the composed training config."""
    trainer = compose_training_config(template_overrides()).trainer
    assert trainer.use_v1 and trainer.v1.trainer_mode == "sync"  # PPOTrainerSync: load, then sync vLLM's weights
    assert (trainer.save_freq, trainer.resume_mode, trainer.resume_from_path) == (50, "auto", None)
    # Relative to the working directory, which the template sets to the repository root.
    assert trainer.default_local_dir == "checkpoints/sparse_video_r1/qwen2_5_vl_grpo_nextqa"
