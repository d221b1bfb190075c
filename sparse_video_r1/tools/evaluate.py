"""Evaluate adaptive frame requests against uniform-frame baselines, every method through the training agent loop.

    python -m sparse_video_r1.tools.evaluate --model PATH --data DATA_DIR/val.parquet --out OUT_DIR \\
        [--backend vllm|transformers] [--uniform 4,8,16,32] [--no-adaptive] [--limit N] [--temperature 0] \\
        [--initial-frames 4 --max-frames-per-request 4 --max-total-frames 16 --max-turns 4 --max-pixels P \\
         --max-tokens-per-turn 512 ...] [--batch-size 256]

Each method is a :class:`~sparse_video_r1.env.config.SparseVideoConfig` run by
:class:`~sparse_video_r1.training.agent_loop.SparseVideoAgentLoop`: ``adaptive`` with the dialogue rules given,
and ``uniform_N`` a single turn shown N uniform frames, with the same decoding settings (so every method shares
one frame sampler). So baselines and the adaptive policy see the same prompts, parser and frame decoding as
training. The flags of the dialogue rules, the decoding settings and the run are made from the fields of
:class:`~sparse_video_r1.env.config.DialogueRules`, :class:`~sparse_video_r1.env.config.DecodingConfig` and
:class:`EvalSettings` (``--help`` lists them).

Each finished dialogue is appended to ``OUT/records_<method>.jsonl`` at once; a re-run skips the questions
already there (re-running only those that ended in ``error``, an infrastructure failure) and every figure is
computed from these files, so an interrupted run resumes where it stopped. ``OUT/settings.json`` pins what
the records depend on: resuming with other settings is refused. Writes ``OUT/results.json`` (every metric with
the settings that produced it), ``OUT/table.md`` (also printed), ``OUT/accuracy_vs_frames.png`` and
``OUT/dialogues.html`` (a sample of dialogues, see :mod:`sparse_video_r1.tools.viewer`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from sparse_video_r1.env.config import (
    DecodingConfig,
    DialogueRules,
    SparseVideoConfig,
    add_config_arguments,
    config_from_args,
    documented_fields,
)
from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.tools import viewer
from sparse_video_r1.tools.eval_report import ADAPTIVE, markdown_table, plot_accuracy_vs_frames, summarize
from sparse_video_r1.training.agent_loop import SparseVideoAgentLoop
from sparse_video_r1.training.standalone import make_agent_loop

logger = logging.getLogger(__name__)

#: Records with this stop reason come from a failure of ours (engine, bug), not the model: a re-run retries them.
RETRIED_STOP_REASON = StopReason.ERROR.value
#: Tokens of text around the frames of an opening prompt (system prompt, question, options, labels).
PROMPT_TEXT_TOKENS = 1024
#: Tokens around each frame's image pads: its "Frame at 3.5s: " label, vision start/end and newline.
FRAME_OVERHEAD_TOKENS = 16
#: Settings that change what a record says; resuming into an OUT made with other values is refused. (The prompt
#: length only decides whether an opening prompt fits; one that does not ends in ``error`` and is retried.)
RESULT_SETTINGS = ("model", "data", "backend", "sampling_params", "seed", "response_length")
#: The decoding fields that change what a record says (with every dialogue rule; the others tune decoding speed).
RESULT_DECODING_FIELDS = ("min_pixels", "max_pixels")


@dataclass(frozen=True)
class Method:
    """One evaluated policy: a name (it names the records file) and the settings it plays with."""

    name: str
    config: SparseVideoConfig

    @property
    def dialogue(self) -> DialogueRules:
        return self.config.dialogue

    def result_settings(self) -> dict[str, Any]:
        """The settings that change what a record says (``settings.json`` pins them per method)."""
        decoding = self.config.decoding
        return {**dataclasses.asdict(self.dialogue), **{key: getattr(decoding, key) for key in RESULT_DECODING_FIELDS}}


def build_methods(adaptive: SparseVideoConfig, uniform: Sequence[int], *, with_adaptive: bool = True) -> list[Method]:
    """``adaptive`` with the given dialogue, then one single-turn ``uniform_N`` per N sharing its other settings."""
    methods = [Method(ADAPTIVE, adaptive)] if with_adaptive else []
    for frames in uniform:
        methods.append(Method(f"uniform_{frames}", adaptive.with_dialogue(adaptive.dialogue.uniform_baseline(frames))))
    if not methods:
        raise ValueError("nothing to evaluate: --no-adaptive needs at least one --uniform frame count")
    return methods


def default_prompt_length(methods: Iterable[Method]) -> int:
    """Room for the largest opening prompt: its frames at the full pixel budget plus the text around them."""
    return max(
        PROMPT_TEXT_TOKENS
        + m.dialogue.initial_frames * (m.config.decoding.max_visual_tokens_per_frame + FRAME_OVERHEAD_TOKENS)
        for m in methods
    )


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run depends on; all of it is written next to the metrics in ``results.json``.

    The fields with a help text are also the command's flags.
    """

    model: str = field(metadata={"help": "checkpoint directory (HF layout)"})
    data: str = field(metadata={"help": "preprocessed parquet, e.g. DATA_DIR/val.parquet"})
    out: str = field(metadata={"help": "output folder; re-running with it resumes"})
    methods: tuple[Method, ...] = ()
    backend: str = field(default="vllm", metadata={"help": "serving engine", "choices": ("vllm", "transformers")})
    limit: int | None = field(default=None, metadata={"help": "first N questions only"})
    sampling_params: Mapping[str, Any] = field(default_factory=lambda: {"temperature": 0.0, "top_p": 1.0})
    seed: int = field(default=0, metadata={"help": "sampling seed; also picks the viewer's dialogues"})
    prompt_length: int = 2048
    response_length: int = field(default=4096, metadata={"help": "tokens for all turns after the prompt"})
    batch_size: int = field(default=256, metadata={"help": "dialogues in flight at once"})
    viewer_samples: int = field(default=20, metadata={"help": "dialogues shown in dialogues.html"})
    device: str = field(default="cpu", metadata={"help": "torch device of the transformers backend"})
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("nothing to evaluate: no methods")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "backend": self.backend,
            "limit": self.limit,
            "sampling_params": dict(self.sampling_params),
            "seed": self.seed,
            "prompt_length": self.prompt_length,
            "response_length": self.response_length,
            "max_model_len": self.prompt_length + self.response_length,
            "batch_size": self.batch_size,
            "viewer_samples": self.viewer_samples,
            "device": self.device if self.backend == "transformers" else None,
            "engine_kwargs": dict(self.engine_kwargs) if self.backend == "vllm" else None,
        }


def method_settings(config: SparseVideoConfig) -> dict[str, Any]:
    """The sections' fields, plus what they imply: whether frames may be requested and tokens per frame."""
    return {
        "dialogue": {**dataclasses.asdict(config.dialogue), "allows_requests": config.dialogue.allows_requests},
        "decoding": {
            **dataclasses.asdict(config.decoding),
            "max_visual_tokens_per_frame": config.decoding.max_visual_tokens_per_frame,
        },
    }


# ---------------------------------------------------------------------------------------------------
# Questions and records


def load_questions(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The ``extra_info`` of each preprocessed row (all the agent loop reads), the first ``limit`` of them."""
    rows = pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist()
    questions = rows[:limit] if limit is not None else rows
    counts = Counter(str(q["qid"]) for q in questions)
    duplicates = sorted(qid for qid, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"{path}: qids must be unique to resume by them; repeated: {duplicates[:5]}")
    return questions


def count_image_tokens(output: AgentLoopOutput, image_token_id: int) -> int:
    """Visual tokens the model read: every ``<|image_pad|>`` of the prompt and of the environment's turns."""
    return sum(1 for token in [*output.prompt_ids, *output.response_ids] if token == image_token_id)


def make_record(
    question: Mapping[str, Any], output: AgentLoopOutput, *, image_token_id: int, seconds: float, run: RunClock
) -> dict[str, Any]:
    """The per-question line of ``records_<method>.jsonl``."""
    fields = output.extra_fields
    answer = question.get("answer")
    return {
        "qid": str(question["qid"]),
        "question_type": question.get("question_type"),
        "answer": answer,
        "predicted_answer": fields["predicted_answer"],
        "correct": fields["predicted_answer"] is not None and fields["predicted_answer"] == answer,
        "stop_reason": fields["stop_reason"],
        "invalid_reason": fields["invalid_reason"],
        # Why a ``video_error`` / ``error`` sample failed (``decode_failed``, ``unreadable``, an exception class).
        "failure_reason": fields.get("failure_reason"),
        "frames_used": fields["frames_used"],
        "visual_tokens": count_image_tokens(output, image_token_id),
        "assistant_turns": fields["assistant_turns"],
        "requested_timestamps": list(fields["requested_timestamps"]),
        "shown_timestamps": list(fields["shown_timestamps"]),
        "video_duration": fields["video_duration"],
        "seconds": seconds,
        "run_id": run.run_id,
        "run_elapsed_s": run.elapsed(),
    }


@dataclass
class RunClock:
    """Identifies one invocation's records and times them, so wall time is recovered from the records alone."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file; a torn last line (a run killed mid-write) is skipped with a warning."""
    if not path.exists():
        return []
    items = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(f"{path}:{number}: not JSON") from None
            logger.warning("%s:%d: skipping a torn last line", path, number)
    return items


def latest_records(path: Path) -> dict[str, dict[str, Any]]:
    """qid -> its latest record (a retried question's new record replaces the old one)."""
    return {record["qid"]: record for record in read_jsonl(path)}


def append_jsonl(path: Path, item: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(item) + "\n")


# ---------------------------------------------------------------------------------------------------
# Running


def _take_engine_stats(server: Any) -> dict[str, Any] | None:
    """Engine counters since the last call, for servers that keep them (AsyncVLLMServer)."""
    stats = getattr(server, "take_stats", None)
    return stats() if stats is not None else None


async def _play_all(
    loop: SparseVideoAgentLoop,
    questions: Sequence[Mapping[str, Any]],
    sampling_params: Mapping[str, Any],
    batch_size: int,
    on_done: Callable[[Mapping[str, Any], AgentLoopOutput, float], None],
) -> None:
    """Run the dialogues with at most ``batch_size`` in flight, reporting each as it ends."""
    window = asyncio.Semaphore(batch_size)

    async def play(question: Mapping[str, Any]) -> tuple[Mapping[str, Any], AgentLoopOutput, float]:
        async with window:
            started = time.perf_counter()
            output = await loop.run(dict(sampling_params), extra_info=dict(question))
            return question, output, time.perf_counter() - started

    for finished in asyncio.as_completed([play(question) for question in questions]):
        on_done(*await finished)


def run_method(
    method: Method,
    questions: Sequence[Mapping[str, Any]],
    server: Any,
    settings: EvalSettings,
    out: Path,
    sampled_qids: frozenset[str],
) -> None:
    """Play ``questions`` with one method, appending each record (and each sampled dialogue's view) as it ends."""
    loop = make_agent_loop(
        settings.model,
        server,
        method.config,
        prompt_length=settings.prompt_length,
        response_length=settings.response_length,
    )
    image_token_id = loop.processor.image_token_id
    clock = RunClock()
    progress = tqdm(total=len(questions), desc=method.name, unit="q")

    def on_done(question: Mapping[str, Any], output: AgentLoopOutput, seconds: float) -> None:
        record = make_record(question, output, image_token_id=image_token_id, seconds=seconds, run=clock)
        append_jsonl(out / f"records_{method.name}.jsonl", record)
        if record["qid"] in sampled_qids:
            view = viewer.dialogue_view(output, question, loop.tokenizer, image_token_id, method=method.name)
            append_jsonl(out / f"dialogues_{method.name}.jsonl", view.as_json())
        progress.update()

    try:
        loop.loop.run_until_complete(_play_all(loop, questions, settings.sampling_params, settings.batch_size, on_done))
    finally:
        progress.close()
    stats = _take_engine_stats(server)
    if stats is not None:
        append_jsonl(out / "engine_stats.jsonl", {"method": method.name, "run_id": clock.run_id, **stats})


def check_resumable(out: Path, settings: EvalSettings) -> None:
    """Refuse to mix records made under other settings into ``out``; then pin this run's settings there."""
    path = out / "settings.json"
    current = {
        "common": {key: settings.as_json()[key] for key in RESULT_SETTINGS},
        "methods": {m.name: m.result_settings() for m in settings.methods},
    }
    if path.exists():
        pinned = json.loads(path.read_text())
        problems = _differences(pinned["common"], current["common"])
        for name, dialogue in current["methods"].items():
            if name in pinned["methods"]:
                problems += _differences(pinned["methods"][name], dialogue, prefix=f"{name}.")
        if problems:
            listed = "\n  ".join(problems)
            raise ValueError(f"{out} holds records made with other settings; use another --out:\n  {listed}")
        current["methods"] = {**pinned["methods"], **current["methods"]}
    path.write_text(json.dumps(current, indent=1) + "\n")


def _differences(pinned: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    return [
        f"{prefix}{key}: {pinned.get(key)!r} there, {value!r} now"
        for key, value in current.items()
        if pinned.get(key) != value
    ]


def git_state() -> dict[str, Any]:
    """The code's commit and whether the work tree had changes; None where this is not a git checkout."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def evaluate(settings: EvalSettings, make_server: Callable[[], Any], *, command: Sequence[str] = ()) -> dict[str, Any]:
    """Run what ``out`` lacks, then report every method from its records; returns what ``results.json`` holds.

    ``make_server`` is called only if some question is left to play, so a finished run reports without
    loading a model.
    """
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(out, settings)
    questions = load_questions(settings.data, settings.limit)
    qids = [str(q["qid"]) for q in questions]
    viewed = next((m for m in settings.methods if m.name == ADAPTIVE), settings.methods[0])
    sampled = frozenset(random.Random(settings.seed).sample(qids, min(settings.viewer_samples, len(qids))))
    server = None
    try:
        for method in settings.methods:
            done = latest_records(out / f"records_{method.name}.jsonl")
            todo = [
                q
                for q in questions
                if done.get(str(q["qid"]), {}).get("stop_reason", RETRIED_STOP_REASON) == RETRIED_STOP_REASON
            ]
            logger.info("%s: %d of %d questions already done", method.name, len(questions) - len(todo), len(questions))
            if todo:
                server = server if server is not None else make_server()
                run_method(method, todo, server, settings, out, sampled if method is viewed else frozenset())
    finally:
        close = getattr(server, "close", None)  # the vLLM engine runs in its own process and thread
        if close is not None:
            close()
    return report(settings, out, qids, viewed, sampled, command)


def report(
    settings: EvalSettings,
    out: Path,
    qids: Sequence[str],
    viewed: Method,
    sampled: frozenset[str],
    command: Sequence[str],
) -> dict[str, Any]:
    """Write results.json, table.md, the plot and the viewer from the records of the current questions."""
    wanted = set(qids)
    engine_runs = defaultdict(list)
    for entry in read_jsonl(out / "engine_stats.jsonl"):
        engine_runs[entry["method"]].append(entry)
    methods: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for method in settings.methods:
        records = [r for qid, r in latest_records(out / f"records_{method.name}.jsonl").items() if qid in wanted]
        metrics[method.name] = summarize(records)
        methods[method.name] = {
            "settings": method_settings(method.config),
            "records_file": f"records_{method.name}.jsonl",
            "metrics": metrics[method.name],
            "engine_runs": engine_runs.get(method.name, []),
        }
    results = {
        "settings": {
            **settings.as_json(),
            "questions": len(qids),
            "command": list(command),
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **git_state(),
        },
        "methods": methods,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown_table(metrics)
    (out / "table.md").write_text(table)
    plot_accuracy_vs_frames(metrics, out / "accuracy_vs_frames.png")
    views = [
        viewer.DialogueView.from_json(item)
        for item in read_jsonl(out / f"dialogues_{viewed.name}.jsonl")
        if item["qid"] in sampled
    ]
    latest_views = {view.qid: view for view in views}
    viewer.write_html(out / "dialogues.html", [latest_views[q] for q in qids if q in latest_views])
    return results


# ---------------------------------------------------------------------------------------------------
# CLI


def _frame_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(item) for item in text.split(",") if item.strip())
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"frame counts must be >= 1, got {text!r}")
    return counts


#: The EvalSettings flags made from its fields (the rest are built from the flags below).
_RUN_FLAGS = tuple(documented_fields(EvalSettings))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, EvalSettings)
    parser.add_argument("--uniform", type=_frame_counts, default=(4, 8, 16, 32), help="baseline frame counts, e.g. 4,8")
    parser.add_argument("--no-adaptive", action="store_true", help="evaluate only the uniform baselines")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    add_config_arguments(parser.add_argument_group("dialogue rules (DialogueRules)"), DialogueRules)
    add_config_arguments(parser.add_argument_group("frame decoding (DecodingConfig)"), DecodingConfig)
    parser.add_argument("--prompt-length", type=int, default=None, help="default: fits the largest opening prompt")
    vllm = parser.add_argument_group("vllm backend")
    vllm.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    vllm.add_argument("--tensor-parallel-size", type=int, default=1)
    vllm.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    vllm.add_argument("--vllm-kwargs", type=json.loads, default={}, help="JSON of further vLLM engine arguments")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    adaptive = SparseVideoConfig(config_from_args(DialogueRules, args), config_from_args(DecodingConfig, args))
    methods = tuple(build_methods(adaptive, args.uniform, with_adaptive=not args.no_adaptive))
    engine_kwargs = {
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "tensor_parallel_size": args.tensor_parallel_size,
        "enforce_eager": args.enforce_eager,
        **args.vllm_kwargs,
    }
    run = {name: getattr(args, name) for name in _RUN_FLAGS}
    return EvalSettings(
        **{
            **run,
            "model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
            "data": str(Path(args.data).resolve()),
            "out": str(Path(args.out).resolve()),
        },
        methods=methods,
        sampling_params={"temperature": args.temperature, "top_p": args.top_p},
        prompt_length=args.prompt_length or default_prompt_length(methods),
        engine_kwargs=engine_kwargs,
    )


def make_server(settings: EvalSettings) -> Any:
    """The backend's server, sized for the largest method (one engine serves them all)."""
    if settings.backend == "transformers":
        from sparse_video_r1.serving.hf_server import TransformersServer

        return TransformersServer(settings.model, device=settings.device, seed=settings.seed)
    from sparse_video_r1.serving.vllm_server import AsyncVLLMServer

    return AsyncVLLMServer.launch(
        settings.model,
        max_images=max(m.dialogue.max_images_per_prompt() for m in settings.methods),
        prompt_length=settings.prompt_length,
        response_length=settings.response_length,
        seed=settings.seed,
        engine_kwargs=dict(settings.engine_kwargs),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    command = [sys.executable, "-m", "sparse_video_r1.tools.evaluate", *(sys.argv[1:] if argv is None else argv)]
    evaluate(settings, lambda: make_server(settings), command=command)
    print((Path(settings.out) / "table.md").read_text())
    print(f"results: {settings.out}/results.json, plot: accuracy_vs_frames.png, dialogues: dialogues.html")


if __name__ == "__main__":
    main()
