"""verl's actor update on a batch shaped like the needle GRPO runs: how long it takes, and which settings fix it.

In the needle runs `update_actor` took 7.9 s of a 10.3 s step for a 1.3M-parameter model on ~46k tokens
(docs/results/needle/attempt2): overhead, not arithmetic. This benchmark finds where it goes and measures the
fix in one run. It builds one batch the way training does (the agent loop with a scripted policy on needle
videos, then verl's own post-processing: 64 dialogues = 8 questions x 8 rollouts, 4-6 frames each), then
runs each variant in its own process on that batch: verl's real ``ActorRolloutRefWorker`` (role ``actor``)
composed from ``scripts/gpu/needle_grpo.sh``'s overrides, ``compute_log_prob`` once (its log-probs become the
old log-probs, so the PPO ratio starts at 1 as in bypass mode), then ``update_actor`` ``--repeats`` times.

Variants (each also sets the other's key, so none depends on the script's defaults):

* ``per_token_log_probs``: verl's default. Without flash-attn (absent on our GPU host) verl computes log-probs
  with ``logprobs_from_logits_v2``, which loops over rows of the logits -- here one row per token -- so the
  forward and backward each launch tens of thousands of tiny kernels.
* ``fused_log_probs``: ``actor_rollout_ref.model.use_fused_kernels=True`` (verl's torch ``FusedLinearForPPO``,
  the LM head and log-softmax in chunks of tokens).
* ``fused_no_checkpointing``: also ``enable_gradient_checkpointing=False`` (the tiny model's activations are a
  few hundred MB; recomputing them is one more forward of launches).
* ``float32_reference``: verl's default path with FSDP's mixed precision set to float32 throughout, the
  yardstick for the log-probs: bf16 logits are rounded to ~3 significant digits, so no bf16 variant matches
  it exactly, and the question is which comes closer.

Reported per variant: the first update's seconds (it also compiles the fused kernel), the median of the later
ones and its ratio to the first variant's, ``compute_log_prob`` seconds, the
mean and largest difference of its log-probs (response tokens) from the float32 reference's, and the first
update's loss and grad norm. ``--profile`` adds a cProfile of one more update per variant
(``actor_update_profile_*.txt``).

    python benchmarks/actor_update.py --device cpu --out docs/results/benchmarks/cpu_actor_update --profile  # ~5 min
    python benchmarks/actor_update.py --device cuda --out OUT                                 # on the GPU
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pickle
import pstats
import random
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import environment, format_table, model_or_tiny  # noqa: E402  (benchmarks/ is a folder of scripts)

#: The variant every other one's log-probs are compared with: verl's default path, all in float32.
REFERENCE = "float32_reference"
#: name -> hydra overrides on top of the needle runs' own.
VARIANTS: dict[str, tuple[str, ...]] = {
    "per_token_log_probs": (
        "actor_rollout_ref.model.use_fused_kernels=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    ),
    "fused_log_probs": (
        "actor_rollout_ref.model.use_fused_kernels=True",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    ),
    "fused_no_checkpointing": (
        "actor_rollout_ref.model.use_fused_kernels=True",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
    ),
    REFERENCE: (
        "actor_rollout_ref.model.use_fused_kernels=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    ),
}


@dataclass(frozen=True)
class Settings:
    model: str
    device: str  # "cuda" or "cpu"
    questions: int = 8
    group: int = 8
    repeats: int = 3
    seed: int = 0


def needle_overrides(model: str, work: Path) -> list[str]:
    """The hydra overrides of the needle runs (`main`), pointed at ``model``."""
    env = {**os.environ, "PRINT_OVERRIDES": "1", "WORK": str(work), "PYTHON": sys.executable}  # the script runs $PYTHON
    lines = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu" / "needle_grpo.sh"), str(work / "unused_out")],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    return [*lines, f"actor_rollout_ref.model.path={model}"]  # a later override of a key wins


def scripted_policy(seed: int) -> Any:
    """Each dialogue requests one random slot centre 0-2 times, then answers: 1-3 turns, lengths that vary."""
    from sparse_video_r1.synthetic import needle

    plans: dict[str, list[str]] = {}

    def policy(prompt_ids: list[int], turn: int, request_id: str) -> str:
        if request_id not in plans:
            rng = random.Random(zlib.crc32(f"{seed}:{len(plans)}".encode()))
            requests = [needle.request_text([needle.slot_centre(rng.randrange(5))]) for _ in range(rng.randint(0, 2))]
            plans[request_id] = [*requests, needle.answer_text(None, rng.randrange(len(needle.COLOURS)))]
        return plans[request_id][min(turn, len(plans[request_id]) - 1)]

    return policy


def build_batch(settings: Settings, work: Path) -> Any:
    """The training batch of one needle GRPO step: agent-loop outputs through verl's post-processing."""
    from verl.utils.tokenizer import hf_processor, hf_tokenizer

    from sparse_video_r1.serving.hf_server import ScriptedServer
    from sparse_video_r1.synthetic import needle
    from sparse_video_r1.training.standalone import make_agent_loop, run_dialogues, to_training_batch

    rows = needle.write_split(
        work / "videos",
        "bench",
        settings.questions,
        random.Random(settings.seed),
        needle.DIALOGUE.dialogue.initial_frames,
    )
    extra_infos = [row["extra_info"] for row in rows for _ in range(settings.group)]
    tokenizer, processor = hf_tokenizer(settings.model), hf_processor(settings.model)
    server = ScriptedServer(tokenizer, scripted_policy(settings.seed))
    prompt_length, response_length = 768, 384  # needle_grpo.sh's PROMPT_LENGTH, RESPONSE_LENGTH
    loop = make_agent_loop(
        settings.model, server, needle.DIALOGUE, prompt_length=prompt_length, response_length=response_length
    )
    outputs = run_dialogues(loop, extra_infos, {"temperature": 1.0, "logprobs": True})
    _, batch = to_training_batch(outputs, tokenizer, processor, prompt_length, response_length)
    batch.meta_info["temperature"] = 1.0  # the rollout's sampling temperature, which its output carries
    # What RayPPOTrainer.fit adds (inline) before the actor steps: token counts and image lengths, for the MFU.
    batch.meta_info["global_token_num"] = torch.sum(batch.batch["attention_mask"], dim=-1).tolist()
    batch.meta_info["images_seqlens"] = [
        length
        for inputs in batch.non_tensor_batch["multi_modal_inputs"]
        if "image_grid_thw" in inputs
        for length in inputs["images_seqlens"].tolist()
    ]
    generator = torch.Generator().manual_seed(settings.seed)
    mask = batch.batch["response_mask"]
    advantages = torch.randn(len(mask), 1, generator=generator).expand_as(mask) * mask
    batch.batch["advantages"] = advantages.contiguous()
    batch.batch["returns"] = batch.batch["advantages"].clone()
    return batch


class _TrainerSteps:
    """RayPPOTrainer's own two actor steps (``_compute_old_log_prob``, ``_update_actor``) over one local worker.

    They turn the padded batch into the worker's input exactly as training does; only the worker group is
    replaced by the in-process worker.
    """

    def __init__(self, config: Any, worker: Any):
        from verl.trainer.ppo.ray_trainer import RayPPOTrainer

        self.config, self.actor_rollout_wg = config, worker
        self.compute_old_log_prob = RayPPOTrainer._compute_old_log_prob.__get__(self)
        self.update_actor = RayPPOTrainer._update_actor.__get__(self)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_variant(
    name: str, settings: Settings, batch_path: Path, out: Path, work: Path, profile: bool
) -> dict[str, Any]:
    """One variant, in this process: build verl's actor worker, time compute_log_prob and update_actor."""
    if settings.device == "cpu":
        import verl_cpu

        verl_cpu.use_cpu()
    else:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29532")
    from hydra import compose, initialize_config_dir
    from verl.workers.engine_workers import ActorRolloutRefWorker

    dialogues = settings.questions * settings.group  # one update of the whole batch per step, as in the runs
    batch_sizes = [
        f"actor_rollout_ref.actor.ppo_mini_batch_size={settings.questions}",
        f"actor_rollout_ref.rollout.n={settings.group}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={dialogues}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={dialogues}",
    ]
    overrides = needle_overrides(settings.model, work) + batch_sizes + list(VARIANTS[name])
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="sparse_video_grpo", overrides=overrides)
    worker = ActorRolloutRefWorker(config=cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    trainer = _TrainerSteps(cfg, worker)
    batch = pickle.loads(batch_path.read_bytes())

    began = time.perf_counter()
    old_log_probs, _ = trainer.compute_old_log_prob(batch)
    log_prob_seconds = time.perf_counter() - began
    log_probs = old_log_probs.batch["old_log_probs"]
    torch.save(log_probs, work / f"actor_update_log_probs_{name}.pt")
    batch.batch["old_log_probs"] = log_probs

    seconds, metrics = [], []
    for _ in range(settings.repeats):
        _synchronize(settings.device)
        began = time.perf_counter()
        result = trainer.update_actor(batch)
        _synchronize(settings.device)
        seconds.append(time.perf_counter() - began)
        metrics.append({key: _scalar(value) for key, value in result.meta_info["metrics"].items()})
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        trainer.update_actor(batch)
        _synchronize(settings.device)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        (out / f"actor_update_profile_{name}.txt").write_text(text.getvalue())
    return {
        "variant": name,
        "overrides": list(VARIANTS[name]),
        "update_seconds": seconds,
        "log_prob_seconds": log_prob_seconds,
        "first_update": metrics[0],
        "tokens": int(batch.batch["attention_mask"].sum()),
        "dialogues": len(batch),
    }


def _scalar(value: Any) -> float | None:
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else statistics.fmean(float(v) for v in value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def steady_seconds(seconds: Sequence[float]) -> float:
    """The median update after the first, which also pays one-off costs (torch.compile of the fused kernel)."""
    return statistics.median(seconds[1:] or seconds)


def table(payload: dict[str, Any]) -> str:
    results = payload["results"]
    base = steady_seconds(results[0]["update_seconds"])
    rows = []
    for entry in results:
        update = steady_seconds(entry["update_seconds"])
        first = entry["first_update"]
        rows.append(
            [
                entry["variant"],
                entry["update_seconds"][0],
                update,
                f"{update / base:.2f}x",
                entry["log_prob_seconds"],
                f"{entry['mean_log_prob_difference']:.1e}",
                f"{entry['max_log_prob_difference']:.1e}",
                f"{first.get('actor/pg_loss', float('nan')):.4f}",
                f"{first.get('actor/grad_norm', float('nan')):.2e}",
            ]
        )
    header = ["variant", "1st update s", "update s", "vs first", "log-prob s", "mean |d|", "max |d|", "pg_loss",
              "grad_norm"]  # fmt: skip
    first = results[0]
    settings = payload["settings"]
    return (
        f"verl actor update on {settings['device']}: {first['dialogues']} dialogues, {first['tokens']} tokens; "
        f"update s: median of updates 2-{settings['repeats']}; |d|: log-prob difference from {REFERENCE} "
        "on response tokens\n" + format_table(header, rows)
    )


def run(settings: Settings, out: Path, work: Path, profile: bool) -> dict[str, Any]:
    """Build the batch once, run every variant in a fresh process on it, compare their log-probs."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    batch_path = work / "actor_update_batch.pkl"
    batch_path.write_bytes(pickle.dumps(build_batch(settings, work)))
    results = []
    for name in VARIANTS:
        result_path = work / f"actor_update_{name}.json"
        command = [sys.executable, __file__, "--child", name, "--batch", str(batch_path), "--result", str(result_path)]
        command += ["--out", str(out), "--work", str(work), "--model", settings.model, "--device", settings.device]
        command += ["--questions", str(settings.questions), "--group", str(settings.group)]
        command += ["--repeats", str(settings.repeats), "--seed", str(settings.seed)]
        command += ["--profile"] if profile else []
        subprocess.run(command, check=True)
        results.append(json.loads(result_path.read_text()))
    reference = torch.load(work / f"actor_update_log_probs_{REFERENCE}.pt")
    mask = pickle.loads(batch_path.read_bytes()).batch["response_mask"].bool()
    for entry in results:
        difference = (torch.load(work / f"actor_update_log_probs_{entry['variant']}.pt") - reference)[mask].abs()
        entry["mean_log_prob_difference"] = float(difference.mean())
        entry["max_log_prob_difference"] = float(difference.max())
    return {"settings": asdict(settings), "results": results}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="videos, the batch, log-probs (default OUT/work)")
    parser.add_argument("--model", help="a Qwen2.5-VL directory; default: build the tiny random one under WORK")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--group", type=int, default=8, help="GRPO n: rollouts per question")
    parser.add_argument("--repeats", type=int, default=3, help="updates per variant (the first is reported apart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile one more update per variant")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or args.out / "work"
    model = model_or_tiny(args.model, work)
    settings = Settings(model, args.device, args.questions, args.group, args.repeats, args.seed)
    if args.child:
        result = run_variant(args.child, settings, args.batch, args.out, work, args.profile)
        args.result.write_text(json.dumps(result, indent=2))
        return
    began = time.perf_counter()
    payload = run(settings, args.out, work, args.profile)
    payload["seconds"] = time.perf_counter() - began
    payload["environment"] = {**environment(), "torch": torch.__version__}
    text = table(payload)
    print(text)
    (args.out / "actor_update.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "actor_update.txt").write_text(text + "\n")
    print(f"wrote {args.out / 'actor_update.json'} and .txt", flush=True)


if __name__ == "__main__":
    main()
