"""Supervised cold start: teach a model the frame-request protocol from recorded dialogues ("traces").

A randomly initialised or base model never writes a valid ``<frames>`` request, so GRPO would never see a
multi-turn sample. A short SFT pass on traces that follow the protocol fixes that. Real users can cold-start
a real model from their own traces with the same entry point.

Each trace is replayed through :class:`~sparse_video_r1.env.dialogue.Episode` with the real frame sampler, so
every assistant turn is trained on exactly the frames the environment would show it during RL. Loss is on
assistant tokens only (their text and end-of-turn token).

This is a small transformers loop rather than verl's SFT trainer: verl's trainer needs torchrun and FSDP
and builds its samples from stored messages, whereas a trace must be replayed against the video to
recreate the observations between turns.

Trace format, one JSON object per line::

    {"extra_info": {"video_path": ..., "question": ..., "options": [...], "answer": "B", ...},
     "turns": ["<think>…</think><frames>3.0, 9.5</frames>", "<think>…</think><answer>B</answer>"]}

An optional ``"dialogue"`` object overrides :class:`~sparse_video_r1.env.config.DialogueRules` fields for that
trace alone. The synthetic traces use it to mix in single-turn uniform-frame dialogues
(``{"initial_frames": 8, "max_total_frames": 8, "max_turns": 1}``), the prompt the evaluation's
``uniform_N`` baselines show: a model cold-started on adaptive dialogues only has never seen that prompt,
and its baselines would measure the prompt shift rather than the frames.

CLI::

    python -m sparse_video_r1.training.sft make-traces --data DATA_DIR/train.parquet --out traces.jsonl
    python -m sparse_video_r1.training.sft train --model MODEL --traces traces.jsonl --out CKPT_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparse_video_r1.env import protocol
from sparse_video_r1.env.config import (
    DialogueRules,
    SparseVideoConfig,
    add_config_arguments,
    config_from_args,
    from_mapping,
    uniform_baseline_fields,
)
from sparse_video_r1.env.dialogue import Episode, VideoQA
from sparse_video_r1.env.frames import FrameSampler

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTConfig:
    """Settings of one cold-start run (recorded next to the checkpoint)."""

    model: str
    traces: str
    out: str
    epochs: int = field(default=3, metadata={"help": "passes over the traces"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (constant after warm-up)"})
    grad_accumulation: int = field(default=1, metadata={"help": "dialogues per optimizer step"})
    seed: int = field(default=0, metadata={"help": "shuffling and initialisation seed"})
    device: str = field(
        default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "torch device to train on"}
    )
    dtype: str = field(
        default="bfloat16" if torch.cuda.is_available() else "float32",
        metadata={
            "help": "dtype of the weights and AdamW states: bfloat16 needs 8 bytes a parameter (a 7B fits one "
            "80 GB GPU), float32 16 (with --autocast bfloat16: exact updates, 3B fits one 80 GB GPU)"
        },
    )
    autocast: str | None = field(
        default=None,
        metadata={"help": "compute dtype under torch.autocast (bfloat16 with float32 weights = mixed precision)"},
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "optimizer steps of linear learning-rate warm-up (deep models need some)"}
    )
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip the gradient norm to this"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward: long dialogues of big models fit"}
    )
    time_budget_s: float | None = field(
        default=None,
        metadata={
            "help": "stop after the optimizer step that passes this many seconds of training (a GPU lease has a "
            "fixed length); the metrics record how far it got"
        },
    )
    batch_vision_windows: bool = field(
        default=True,
        metadata={
            "help": "without flash-attn, attend all vision windows of one length in one SDPA call instead of one "
            "call per window (same result; see training/vision_windows.py)"
        },
    )


@dataclass(frozen=True)
class Trace:
    sample: VideoQA
    turns: tuple[str, ...]
    #: DialogueRules fields this trace is played with instead of the run's (see the module docstring).
    dialogue: Mapping[str, Any] = field(default_factory=dict)

    def config(self, base: DialogueRules) -> DialogueRules:
        """The run's dialogue rules with this trace's overrides; an unknown field raises, naming it."""
        return from_mapping(DialogueRules, {**asdict(base), **self.dialogue})


def read_traces(path: str | Path) -> list[Trace]:
    traces = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sample = VideoQA.from_extra_info(record["extra_info"])
                trace = Trace(sample, tuple(record["turns"]), dict(record.get("dialogue") or {}))
                trace.config(DialogueRules())  # an unknown or invalid override fails here, with its line
                traces.append(trace)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_number}: not a trace ({error})") from error
    if not traces:
        raise ValueError(f"{path}: no traces")
    return traces


def replay(trace: Trace, config: DialogueRules, sampler: FrameSampler) -> tuple[list[dict[str, Any]], list[Any]]:
    """Play a trace through the environment; return the full message list and every image shown, in order.

    ``config`` is the run's dialogue rules; the trace's own overrides apply on top of it.
    """
    episode = Episode(trace.sample, trace.config(config), sampler)
    episode.start()
    episode.play(trace.turns)
    if not episode.done:
        raise ValueError(f"trace of {trace.sample.qid!r} does not end with an answer")
    return episode.messages, episode.images


def encode_dialogue(processor: Any, messages: list[dict[str, Any]], images: list[Any]) -> dict[str, torch.Tensor]:
    """Tokenise a whole dialogue with the chat template; labels cover assistant turns only."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    input_ids = inputs["input_ids"][0]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for start, end in assistant_spans(processor.tokenizer, input_ids.tolist()):
        labels[start:end] = input_ids[start:end]
    inputs["labels"] = labels.unsqueeze(0)
    return dict(inputs)


def assistant_spans(tokenizer: Any, ids: list[int]) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of each assistant turn's content and its ``<|im_end|>``."""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    spans = []
    for position, token in enumerate(ids):
        if token != im_start:
            continue
        header_end = position + 1
        while header_end < len(ids) and "\n" not in tokenizer.decode(ids[position + 1 : header_end]):
            header_end += 1
        if tokenizer.decode(ids[position + 1 : header_end]).strip() != "assistant":
            continue
        end = ids.index(im_end, header_end) + 1 if im_end in ids[header_end:] else len(ids)
        spans.append((header_end, end))
    return spans


def load_model(config: SFTConfig) -> Any:
    """The model as the SFT loop trains it: on its device, vision windows batched, checkpointing, train mode."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.model, dtype=getattr(torch, config.dtype))
    model.to(config.device)
    if config.batch_vision_windows:
        from sparse_video_r1.training.vision_windows import batch_vision_windows

        batch_vision_windows(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def compute_autocast(config: SFTConfig) -> torch.autocast:
    """The loop's compute dtype: ``config.autocast`` over the weights' dtype, or no autocast at all."""
    return torch.autocast(
        device_type=torch.device(config.device).type,
        dtype=getattr(torch, config.autocast or config.dtype),
        enabled=config.autocast is not None,
    )


def train(config: SFTConfig, settings: SparseVideoConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on the traces and save model + processor to ``config.out``."""
    from transformers import AutoProcessor

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    processor = AutoProcessor.from_pretrained(config.model)
    model = load_model(config)
    sampler = FrameSampler.from_config(settings.decoding)
    examples = [
        encode_dialogue(processor, *replay(trace, settings.dialogue, sampler)) for trace in read_traces(config.traces)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    autocast = compute_autocast(config)
    losses: list[float] = []
    tokens_trained = 0
    started = time.perf_counter()
    out_of_time = False
    for epoch in range(config.epochs):
        rng.shuffle(examples)
        for step, example in enumerate(examples, start=1):
            batch = {key: value.to(config.device) for key, value in example.items()}
            with autocast:
                loss = model(**batch).loss
            (loss / config.grad_accumulation).backward()
            losses.append(loss.item())
            tokens_trained += int((example["labels"] != IGNORE_INDEX).sum())
            if step % config.grad_accumulation == 0 or step == len(examples):
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                warmup.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
                out_of_time = config.time_budget_s is not None and elapsed > config.time_budget_s
                if out_of_time:
                    break
        done = len(losses) - epoch * len(examples)
        logger.info("epoch %d: mean loss %.4f over %d dialogues", epoch + 1, sum(losses[-done:]) / done, done)
        if out_of_time:
            logger.info("time budget of %.0f s spent after %d dialogues", config.time_budget_s, len(losses))
            break
    seconds = time.perf_counter() - started
    out = Path(config.out)
    if config.autocast is not None:
        model.to(getattr(torch, config.autocast))  # saved as it computed: the dtype real checkpoints ship in
    model.save_pretrained(out)
    processor.save_pretrained(out)
    metrics = {
        "config": asdict(config),
        "sparse_video": asdict(settings),
        "examples": len(examples),
        "first_epoch_loss": sum(losses[: len(examples)]) / len(losses[: len(examples)]),
        "last_epoch_loss": sum(losses[-len(examples) :]) / len(losses[-len(examples) :]),
        "epochs_done": len(losses) / len(examples),
        "stopped_by_time_budget": out_of_time,
        "seconds": seconds,
        "seconds_per_dialogue": seconds / len(losses),
        "assistant_tokens_trained": tokens_trained,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def synthetic_traces(
    samples: Iterable[VideoQA],
    durations: Sequence[float],
    config: DialogueRules,
    *,
    seed: int = 0,
    request_probability: float = 0.7,
    uniform_share: float = 0.0,
    uniform_frames: Sequence[int] = (4, 8, 16),
) -> list[dict[str, Any]]:
    """Protocol-following traces with *uninformed* requests: random timestamps, then the right answer.

    They teach the format and that asking is allowed, not where to look: that is left to RL. A share
    ``uniform_share`` of them are instead single-turn dialogues shown N uniform frames (N drawn from
    ``uniform_frames``) that answer at once, so the uniform baselines' prompt is not new to the model.
    """
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
    if uniform_share and (not uniform_frames or min(uniform_frames) < 1):
        raise ValueError(f"uniform_frames must be positive frame counts, got {list(uniform_frames)}")
    rng = random.Random(seed)
    traces = []
    for sample, duration in zip(samples, durations, strict=True):
        if sample.answer is None:
            raise ValueError(f"sample {sample.qid!r} has no answer; traces need one")
        answer = protocol.answer_turn("I have seen enough.", sample.answer)
        if uniform_share and rng.random() < uniform_share:
            frames = rng.choice(list(uniform_frames))
            traces.append(
                {
                    "extra_info": _extra_info(sample),
                    "turns": [answer],
                    "dialogue": uniform_baseline_fields(frames),
                }
            )
            continue
        turns = []
        max_requests = config.max_turns - 1 if config.allows_requests else 0
        requests = 0
        while requests < max_requests and rng.random() < request_probability:
            count = rng.randint(1, config.max_frames_per_request)
            stamps = sorted(round(rng.uniform(0.0, duration), 1) for _ in range(count))
            turns.append(protocol.request_turn("I should look at more frames.", stamps))
            requests += 1
        turns.append(answer)
        traces.append({"extra_info": _extra_info(sample), "turns": turns})
    return traces


def _extra_info(sample: VideoQA) -> dict[str, Any]:
    return {
        "qid": sample.qid,
        "video_path": sample.video_path,
        "question": sample.question,
        "options": list(sample.options),
        "answer": sample.answer,
    }


def _make_traces(args: argparse.Namespace, settings: SparseVideoConfig) -> None:
    import pandas as pd

    frame = pd.read_parquet(args.data)
    samples = [VideoQA.from_extra_info(info) for info in frame["extra_info"]]
    sampler = FrameSampler.from_config(settings.decoding)
    durations = [sampler.info(sample.video_path).duration for sample in samples]
    traces = synthetic_traces(
        samples,
        durations,
        settings.dialogue,
        seed=args.seed,
        request_probability=args.request_prob,
        uniform_share=args.uniform_share,
        uniform_frames=[int(count) for count in args.uniform_frames.split(",")],
    )
    with open(args.out, "w", encoding="utf-8") as handle:
        for trace in traces:
            handle.write(json.dumps(trace) + "\n")
    requested = sum(len(trace["turns"]) > 1 for trace in traces)
    uniform = sum("dialogue" in trace for trace in traces)
    logger.info("wrote %d traces (%d with requests, %d uniform) to %s", len(traces), requested, uniform, args.out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dialogue",
        default="{}",
        help='sparse_video settings as JSON, by section: {"dialogue": {...}, "decoding": {...}}',
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-traces", help="synthetic traces from a preprocessed parquet")
    make.add_argument("--data", required=True)
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--request-prob", type=float, default=0.7)
    make.add_argument(
        "--uniform-share", type=float, default=0.2, help="share of single-turn uniform-frame traces (baseline prompt)"
    )
    make.add_argument("--uniform-frames", default="4,8,16", help="frame counts of those traces, comma-separated")
    fit = commands.add_parser("train", help="fine-tune a model on traces")
    fit.add_argument("--model", required=True)
    fit.add_argument("--traces", required=True)
    fit.add_argument("--out", required=True)
    add_config_arguments(fit, SFTConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SparseVideoConfig.from_mapping(json.loads(args.dialogue))
    if args.command == "make-traces":
        _make_traces(args, settings)
    else:
        config = config_from_args(SFTConfig, args, model=args.model, traces=args.traces, out=args.out)
        logger.info("SFT done: %s", json.dumps(train(config, settings)))


if __name__ == "__main__":
    main()
