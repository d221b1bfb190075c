"""The cold start's speed with and without batched vision windows, in one run on the same traces.

Without flash-attn, transformers attends each vision window in its own SDPA call
(``sparse_video_r1.training.vision_windows``). This runs ``sparse_video_r1.training.sft.train`` itself, one
epoch over the first ``--dialogues`` traces, once per variant (each from the same initial weights), and
reports seconds per dialogue, their ratio, the peak GPU memory, and the aten ops one dialogue's forward and
backward issue (counted by torch's profiler on the first trace).

    python benchmarks/sft_step.py --model MODEL --traces traces.jsonl --out OUT_DIR [SFT flags, e.g. --device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoProcessor

from sparse_video_r1.env.config import SparseVideoConfig, add_config_arguments, config_from_args
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.training.sft import (
    SFTConfig,
    compute_autocast,
    encode_dialogue,
    load_model,
    read_traces,
    replay,
    train,
)

logger = logging.getLogger("sft_step")

VARIANTS = {"per_window": False, "batched_windows": True}


def count_ops(config: SFTConfig, settings: SparseVideoConfig) -> int:
    """Aten ops of one forward and backward on the first trace, as the SFT loop runs it."""
    model = load_model(config)
    trace = read_traces(config.traces)[0]
    example = encode_dialogue(
        AutoProcessor.from_pretrained(config.model),
        *replay(trace, settings.dialogue, FrameSampler.from_config(settings.decoding)),
    )
    batch = {key: value.to(config.device) for key, value in example.items()}
    with profile(activities=[ProfilerActivity.CPU]) as trace_events:
        with compute_autocast(config):
            loss = model(**batch).loss
        loss.backward()
    del model
    return sum(1 for event in trace_events.events() if event.name.startswith("aten::"))


def run(config: SFTConfig, settings: SparseVideoConfig, dialogues: int, work: Path) -> dict[str, Any]:
    subset = work / "traces.jsonl"
    lines = [line for line in Path(config.traces).read_text().splitlines() if line.strip()][:dialogues]
    subset.write_text("\n".join(lines) + "\n")
    results = []
    for variant, batched in VARIANTS.items():
        variant_config = replace(
            config, traces=str(subset), out=str(work / variant), epochs=1, batch_vision_windows=batched
        )
        ops = count_ops(variant_config, settings)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        metrics = train(variant_config, settings)
        shutil.rmtree(work / variant)
        results.append(
            {
                "variant": variant,
                "dialogues": metrics["examples"],
                "seconds": metrics["seconds"],
                "seconds_per_dialogue": metrics["seconds_per_dialogue"],
                "loss": metrics["first_epoch_loss"],
                "aten_ops_one_dialogue": ops,
                "peak_gpu_memory_gb": metrics["peak_gpu_memory_gb"],
            }
        )
        logger.info("%s", json.dumps(results[-1]))
    base = results[0]
    for entry in results:
        entry["speedup"] = base["seconds_per_dialogue"] / entry["seconds_per_dialogue"]
        entry["op_ratio"] = entry["aten_ops_one_dialogue"] / base["aten_ops_one_dialogue"]
    return {"config": {**vars(config), "dialogues": dialogues}, "results": results}


def table(payload: dict[str, Any]) -> str:
    rows = [
        "| variant | s/dialogue | speed-up | aten ops/dialogue | op ratio | loss | peak GPU GiB |",
        "|---" * 7 + "|",
    ]
    for entry in payload["results"]:
        peak = entry["peak_gpu_memory_gb"]
        rows.append(
            f"| {entry['variant']} | {entry['seconds_per_dialogue']:.3f} | {entry['speedup']:.2f}x | "
            f"{entry['aten_ops_one_dialogue']:,} | {entry['op_ratio']:.2f} | {entry['loss']:.4f} | "
            f"{'-' if peak is None else f'{peak:.1f}'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--traces", required=True)
    parser.add_argument("--out", required=True, help="folder for sft_step.json and sft_step.md")
    parser.add_argument("--dialogues", type=int, default=16, help="traces per variant (one epoch)")
    add_config_arguments(parser, SFTConfig)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(SFTConfig, args, model=args.model, traces=args.traces, out=args.out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as work:
        payload = run(config, SparseVideoConfig(), args.dialogues, Path(work))
    (out / "sft_step.json").write_text(json.dumps(payload, indent=2))
    (out / "sft_step.md").write_text(table(payload) + "\n")
    print(table(payload))


if __name__ == "__main__":
    main()
