"""The training metrics, curves and rollout viewer on a CPU: a few "steps" of real dialogues through verl's metric path.

What it is: the tiny Qwen2.5-VL after a short SFT cold start plays GRPO groups of real dialogues (the training agent
loop, the transformers server, generated videos for real NExT-QA annotation rows, rows preprocessed by
``dataset/NExT_QA.py``); each step's groups then go through verl's own v1 post-generation code
(:mod:`sparse_video_r1.training.cpu_step`: reward loop, TransferQueue, the configured replay buffer,
``MetricsAggregator``, ``Tracking`` with the template's default ``["console","tensorboard"]``,
``_log_rollout_data``). What it is not: a GRPO run. No update happens between steps (verl's trainer needs vLLM and a
GPU), so the curves show sampling noise around one policy, not learning.

    python scripts/cpu_training_metrics_example.py --out docs/results/training_metrics [--steps 8]

Writes OUT/{console.log, tensorboard/, rollouts/, curves.png, step_<N>.html, sft_metrics.json}. The cold start
(about 15 minutes on a loaded 2-core machine) is kept in --work and reused by a later run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import ray
import transfer_queue as tq
from hydra import compose, initialize_config_dir

from sparse_video_r1.env.config import DecodingConfig, DialogueRules, SparseVideoConfig
from sparse_video_r1.env.dialogue import VideoQA
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.serving.hf_server import TransformersServer
from sparse_video_r1.synthetic.nextqa import write_nextqa_like_release
from sparse_video_r1.synthetic.tiny_model import build_tiny_qwen2_5_vl
from sparse_video_r1.tools import curves, viewer
from sparse_video_r1.training.cpu_step import CpuStepRunner, run_groups
from sparse_video_r1.training.sft import SFTConfig, synthetic_traces, train
from sparse_video_r1.training.standalone import make_agent_loop

ROOT = Path(__file__).resolve().parents[1]
DIALOGUE = SparseVideoConfig(
    DialogueRules(initial_frames=4, max_frames_per_request=3, max_total_frames=10, max_turns=3, max_tokens_per_turn=96),
    DecodingConfig(min_pixels=3136, max_pixels=12544),
)
LENGTH = 1536
logger = logging.getLogger("example")


def prepare(work: Path, videos: int, sft_epochs: int, copies: int) -> tuple[Path, list[dict]]:
    """Tiny model, NExT-QA-shaped rows over generated videos, SFT cold start (as scripts/gpu/grpo_smoke.sh does)."""
    splits = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    if (work / "sft" / "sft_metrics.json").exists():  # a previous run's cold start: reuse it
        rows = [row for split in splits for row in pq.read_table(work / "data" / f"{split}.parquet").to_pylist()]
        return work / "sft", rows
    model = build_tiny_qwen2_5_vl(work / "tiny", seed=0)
    write_nextqa_like_release(
        ROOT / "tests/fixtures/nextqa", work / "raw", splits, videos_per_split=videos, max_seconds=30.0
    )
    command = [sys.executable, "dataset/NExT_QA.py", "--raw", work / "raw", "--out", work / "data", "--splits"]
    subprocess.run([*command, *splits], check=True, cwd=ROOT)
    rows = [row for split in splits for row in pq.read_table(work / "data" / f"{split}.parquet").to_pylist()]
    # Uninformed protocol traces (random requests), as `python -m sparse_video_r1.training.sft make-traces` writes them.
    questions = [VideoQA.from_extra_info(row["extra_info"]) for row in rows]
    sampler = FrameSampler.from_config(DIALOGUE.decoding)
    durations = [sampler.info(question.video_path).duration for question in questions]
    traces = synthetic_traces(
        questions * copies, durations * copies, DIALOGUE.dialogue, seed=1, request_probability=0.8
    )
    (work / "traces.jsonl").write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    config = SFTConfig(str(model), str(work / "traces.jsonl"), str(work / "sft"), epochs=sft_epochs, lr=1e-3)
    train(config, DIALOGUE)
    return work / "sft", rows


def training_config(model: Path, out: Path, n: int):
    """The template's own overrides (its default LOGGER), composed with configs/sparse_video_grpo.yaml."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,  # the template's interpreter: this one, not the first python3 on PATH
        "PRINT_OVERRIDES": "1",
        "MODEL_PATH": str(model),
        "RUN_DIR": str(out),
        "ROLLOUT_DATA_DIR": str(out / "rollouts"),
        "EXPERIMENT_NAME": "cpu_metrics_example",
        "ROLLOUT_N": str(n),
        "PROMPT_LENGTH": str(LENGTH),
        "RESPONSE_LENGTH": str(LENGTH),
    }
    extra = DIALOGUE.hydra_overrides()  # after the template's own dialogue overrides, so these win
    template = ROOT / "scripts/run_qwen2_5_vl_template.sh"
    printed = subprocess.run(["bash", str(template), *extra], env=env, capture_output=True, text=True, check=True)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="sparse_video_grpo", overrides=printed.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/svr1_metrics_example"))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--questions", type=int, default=4, help="questions (GRPO groups) per step")
    parser.add_argument("--n", type=int, default=4, help="dialogues per question")
    parser.add_argument("--videos", type=int, default=6, help="videos per annotation CSV (3 CSVs)")
    parser.add_argument("--sft-epochs", type=int, default=4)
    parser.add_argument("--copies", type=int, default=10, help="cold-start traces per question")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model, rows = prepare(args.work, args.videos, args.sft_epochs, args.copies)
    config = training_config(model, out, args.n)
    logger.info("trainer.logger=%s, sampler=%s", list(config.trainer.logger), config.trainer.v1.sampler.custom_sampler)
    loop = make_agent_loop(
        model, TransformersServer(model, seed=0), DIALOGUE, prompt_length=LENGTH, response_length=LENGTH
    )
    os.environ["TENSORBOARD_DIR"] = str(out / "tensorboard")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init()
    runner = CpuStepRunner(config, loop.tokenizer, loop.processor, backends=list(config.trainer.logger))
    sampling = {"temperature": 1.0, "top_p": 1.0, "logprobs": True}
    with (out / "console.log").open("w") as console, contextlib.redirect_stdout(console):
        for step in range(1, args.steps + 1):
            batch = [rows[((step - 1) * args.questions + i) % len(rows)] for i in range(args.questions)]
            groups = run_groups(loop, batch, args.n, sampling)
            for i, (row, group) in enumerate(zip(batch, groups, strict=True)):
                runner.put_group(f"step{step}q{i}", row, group, step)
            runner.finish_step(step, prompts=len(batch))
            console.flush()
            logger.info("step %d done", step)
    runner.close()
    tq.close()
    ray.shutdown()
    shutil.copy(model / "sft_metrics.json", out / "sft_metrics.json")
    scalars = curves.read_run(out / "tensorboard")
    curves.plot_curves(scalars, out / "curves.png", smooth=3, title="CPU example (no updates: one policy sampled)")
    viewer.render_rollouts(
        out / "rollouts", args.steps, out / f"step_{args.steps}.html", limit=64, max_pixels=DIALOGUE.decoding.max_pixels
    )
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
