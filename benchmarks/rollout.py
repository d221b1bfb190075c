"""Rollout throughput and environment overhead of the agent loop: adaptive frame requests vs one turn.

    python benchmarks/rollout.py --out DIR [--backend vllm|transformers] [--dialogues 64 256] [--prefix-caching on]

The agent loop (:func:`~sparse_video_r1.training.standalone.make_agent_loop`, the class verl trains) plays batches of
dialogues over NExT-QA-shaped videos (640x480, 30 fps, H.264), ``--group`` rollouts per question as in GRPO,
against one server (vLLM's ``AsyncLLM`` behind :class:`~sparse_video_r1.serving.vllm_server.AsyncVLLMServer`, or
the transformers backend for a CPU check). Two methods see the same total number of frames:

* ``adaptive``: ``--initial-frames`` uniform frames, one request turn for ``--requested-frames`` more, then
  the answer;
* ``single_turn``: all ``initial + requested`` frames uniformly up front, then the answer.

A random tiny model does not ask for frames by itself, so the policy is forced (:class:`ForcedPolicyServer`):
the engine generates for exactly as many tokens as the scripted turn has (``ignore_eos``), then the
scripted tokens stand in for the sampled ones. Generation cost and the environment's work are thus real
and every dialogue takes the multi-turn path; the request's timestamps follow a GRPO group (a few moments
per question, jittered per rollout). Reported per method and batch size:

* dialogues/s and generated tokens/s (wall time of the whole batch);
* the environment's share of the wall time: the time no request is in the engine (1 - engine busy / wall),
  and per dialogue the time outside ``generate`` over its total;
* how much of the frame decoding overlaps engine work (overlap of the two sets of intervals);
* the prefix-cache hit rate (vLLM's ``num_cached_tokens`` over prompt tokens), run once with prefix caching
  on and once off (``--prefix-caching``; one engine per process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import profile_summary
from common import model_or_tiny  # benchmarks/ is a folder of scripts
from verl.workers.rollout.replica import TokenOutput

from sparse_video_r1.env.config import DecodingConfig, DialogueRules, SparseVideoConfig
from sparse_video_r1.env.frames import FrameSampler, uniform_timestamps
from sparse_video_r1.synthetic.videos import write_index_video
from sparse_video_r1.training.standalone import make_agent_loop

logger = logging.getLogger("rollout_benchmark")

WIDTH, HEIGHT, FPS = 640, 480, 30.0
THINK = "<think>" + " ".join(["look"] * 24) + "</think>"  # a fixed reasoning stretch, same in both methods
ANSWER = THINK + "<answer>B</answer>"


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str
    model: str
    dialogues: tuple[int, ...]
    group: int
    initial_frames: int
    requested_frames: int
    video_seconds: int
    videos: int
    prefix_caching: bool
    warmup: int
    repeats: int
    seed: int
    decode_workers: int = DecodingConfig.decode_workers
    #: vLLM without CUDA graphs (faster start); verl's rollout default captures them (``enforce_eager: False``).
    enforce_eager: bool = True
    #: Where to write a py-spy profile of the timed batches (this process and the vLLM engine's), if anywhere.
    profile: str | None = None


class Intervals:
    """Thread-safe list of (start, end) perf-counter intervals, and the measure of their union."""

    def __init__(self) -> None:
        self._spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        with self._lock:
            self._spans.append((start, end))

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def union(self) -> list[tuple[float, float]]:
        with self._lock:
            spans = sorted(self._spans)
        merged: list[tuple[float, float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


def measure(spans: Sequence[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


class TimedSampler:
    """The loop's :class:`FrameSampler`, with every ``fetch`` recorded as an interval (for the overlap)."""

    def __init__(self, sampler: FrameSampler, spans: Intervals) -> None:
        self._sampler = sampler
        self._spans = spans

    def fetch(self, path: Any, timestamps: Sequence[float]) -> Any:
        started = time.perf_counter()
        try:
            return self._sampler.fetch(path, timestamps)
        finally:
            self._spans.add(started, time.perf_counter())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)


class ForcedPolicyServer:
    """Wraps a server: the engine generates as many tokens as the scripted turn, the script's tokens come back.

    ``script(request_id, turn)`` gives the turn's text. Each inner ``generate`` is recorded as an
    engine-busy interval: with continuous batching the engine works while any request is in it.
    """

    def __init__(self, inner: Any, tokenizer: Any, script: Callable[[str, int], str], engine: Intervals) -> None:
        self.inner = inner
        self.tokenizer = tokenizer
        self.script = script
        self.engine = engine
        self.turns: dict[str, int] = {}
        self.generated_tokens = 0

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        turn = self.turns.get(request_id, 0)
        self.turns[request_id] = turn + 1
        ids = self.tokenizer.encode(self.script(request_id, turn), add_special_tokens=False)
        ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        ids = ids[: sampling_params.get("max_tokens", len(ids))]
        params = {**sampling_params, "max_tokens": len(ids), "ignore_eos": True}
        started = time.perf_counter()
        output = await self.inner.generate(request_id, prompt_ids=prompt_ids, sampling_params=params, **kwargs)
        self.engine.add(started, time.perf_counter())
        self.generated_tokens += len(output.token_ids)
        log_probs = [0.0] * len(ids) if sampling_params.get("logprobs") else None
        return TokenOutput(
            token_ids=ids, log_probs=log_probs, stop_reason="completed", extra_fields=output.extra_fields
        )


def request_script(duration: float, initial: int, requested: int, seed: int) -> Callable[[str, int], str]:
    """Turn 0 asks for ``requested`` frames, each near one of three moments, jittered by up to 1 s; then the answer.

    The moments are the same for every question (all videos have one length), so the rollouts of a group,
    which share their question's video, ask for overlapping stretches as GRPO groups tend to. The frames
    asked for are distinct from each other and from the ``initial`` uniform ones, so every dialogue ends
    with exactly ``initial + requested`` frames, as the single-turn baseline does.
    """
    moments = [duration * fraction for fraction in (0.3, 0.5, 0.7)]
    shown = {int(t * FPS) for t in uniform_timestamps(duration, initial)}

    def script(request_id: str, turn: int) -> str:
        if turn > 0:
            return ANSWER
        rng = random.Random(hashlib.sha256(f"{seed}-{request_id}".encode()).digest())
        frames: set[int] = set()
        while len(frames) < requested:
            t = min(duration - 1 / FPS, max(0.0, rng.choice(moments) + rng.uniform(-1.0, 1.0)))
            if int(t * FPS) not in shown:
                frames.add(int(t * FPS))
        return THINK + "<frames>" + ", ".join(f"{(index + 0.5) / FPS:.3f}" for index in sorted(frames)) + "</frames>"

    return script


def dialogue_configs(settings: Settings) -> dict[str, SparseVideoConfig]:
    total = settings.initial_frames + settings.requested_frames
    decoding = DecodingConfig(decode_workers=settings.decode_workers)
    adaptive = DialogueRules(
        initial_frames=settings.initial_frames,
        max_frames_per_request=settings.requested_frames,
        max_total_frames=total,
        max_turns=3,
        max_tokens_per_turn=256,
    )
    single = DialogueRules(
        initial_frames=total, max_frames_per_request=0, max_total_frames=total, max_turns=1, max_tokens_per_turn=256
    )
    return {"adaptive": SparseVideoConfig(adaptive, decoding), "single_turn": SparseVideoConfig(single, decoding)}


def write_videos(settings: Settings, folder: Path) -> list[Path]:
    """NExT-QA-shaped clips (640x480, 30 fps, x264's default keyframe interval), written once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(settings.videos):
        path = folder / f"clip_{number:02d}_{settings.video_seconds}s.mp4"
        if not path.exists():
            write_index_video(
                path.with_suffix(".partial.mp4"),
                num_frames=int(settings.video_seconds * FPS),
                fps=FPS,
                width=WIDTH,
                height=HEIGHT,
            )
            path.with_suffix(".partial.mp4").rename(path)
        paths.append(path)
    return paths


def rows_for(count: int, group: int, videos: Sequence[Path]) -> list[dict[str, Any]]:
    """``count`` dialogues: ``group`` rollouts per question, question ``q`` on video ``q % len(videos)``."""
    return [
        {
            "qid": f"q{number // group}",
            "video_path": str(videos[(number // group) % len(videos)]),
            "question": f"Question {number // group}: what does the person do after picking up the cup?",
            "options": ["drinks", "puts it down", "throws it", "washes it", "gives it away"],
            "answer": "B",
        }
        for number in range(count)
    ]


def play(loop: Any, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, float]]:
    """All dialogues concurrently on the loop's event loop, each with its own wall time."""
    params = {"temperature": 1.0, "top_p": 1.0, "logprobs": False}

    async def one(row: dict[str, Any]) -> tuple[Any, float]:
        started = time.perf_counter()
        output = await loop.run(dict(params), extra_info=dict(row))
        return output, time.perf_counter() - started

    async def everything() -> list[tuple[Any, float]]:
        return await asyncio.gather(*(one(row) for row in rows))

    return loop.loop.run_until_complete(everything())


def run_batch(
    method: str, loop: Any, forced: ForcedPolicyServer, decode: Intervals, rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One timed batch: throughput, engine idle share, per-dialogue time outside ``generate``, decode overlap."""
    loop.sampler.close()  # a fresh frame cache and fresh readers, as for a new batch of questions
    sampler_before = dataclasses.asdict(loop.sampler.stats())  # the sampler counts from its creation
    forced.engine.clear()
    decode.clear()
    take_stats = getattr(forced.inner, "take_stats", None)
    if take_stats is not None:
        take_stats()
    tokens_before = forced.generated_tokens
    started = time.perf_counter()
    results = play(loop, rows)
    wall = time.perf_counter() - started
    engine, decoding = forced.engine.union(), decode.union()
    engine_busy, decode_busy = measure(engine), measure(decoding)
    outputs = [output for output, _ in results]
    outside = [1 - output.metrics.generate_sequences / seconds for output, seconds in results if seconds > 0]
    stops: dict[str, int] = {}
    for output in outputs:
        stop = str(output.extra_fields.get("stop_reason"))
        stops[stop] = stops.get(stop, 0) + 1
    generated = forced.generated_tokens - tokens_before
    entry = {
        "method": method,
        "dialogues": len(rows),
        "wall_s": wall,
        "dialogues_per_s": len(rows) / wall,
        "generated_tokens": generated,
        "generated_tokens_per_s": generated / wall,
        "engine_busy_s": engine_busy,
        "engine_idle_share": 1 - engine_busy / wall,
        "outside_generate_share_mean": sum(outside) / len(outside),
        "decode_busy_s": decode_busy,
        "decode_overlapping_engine_share": overlap(decoding, engine) / decode_busy if decode_busy else 0.0,
        "env_seconds_mean": sum(output.metrics.tool_calls for output in outputs) / len(outputs),
        "frames_used_mean": sum(output.extra_fields.get("frames_used", 0) for output in outputs) / len(outputs),
        "assistant_turns_mean": sum(output.extra_fields.get("assistant_turns", 0) for output in outputs) / len(outputs),
        "stop_reasons": stops,
        "sampler": {k: v - sampler_before[k] for k, v in dataclasses.asdict(loop.sampler.stats()).items()},
    }
    if take_stats is not None:
        entry["engine"] = take_stats()
    return entry


def make_server(settings: Settings, max_images: int, prompt_length: int, response_length: int) -> Any:
    if settings.backend == "transformers":
        from sparse_video_r1.serving.hf_server import TransformersServer

        return TransformersServer(settings.model, device="cpu", seed=settings.seed)
    from sparse_video_r1.serving.vllm_server import AsyncVLLMServer

    return AsyncVLLMServer.launch(
        settings.model,
        max_images=max_images,
        prompt_length=prompt_length,
        response_length=response_length,
        seed=settings.seed,
        engine_kwargs={
            "enable_prefix_caching": settings.prefix_caching,
            "gpu_memory_utilization": 0.3,
            "enforce_eager": settings.enforce_eager,
        },
    )


def run(settings: Settings, work: Path) -> dict[str, Any]:
    """Every method at every batch size against one server, ``settings.repeats`` times; the JSON payload."""
    videos = write_videos(settings, work / "videos")
    configs = dialogue_configs(settings)
    prompt_length, response_length = 2048, 1024
    server = make_server(
        settings, max(c.dialogue.max_images_per_prompt() for c in configs.values()), prompt_length, response_length
    )
    try:
        return play_methods(settings, server, configs, videos, prompt_length, response_length)
    finally:
        close = getattr(server, "close", None)
        if close is not None:
            close()


def play_methods(
    settings: Settings,
    server: Any,
    configs: dict[str, SparseVideoConfig],
    videos: Sequence[Path],
    prompt_length: int,
    response_length: int,
) -> dict[str, Any]:
    """Warm up each method, then run (repeat, batch size, method) in turn: the methods alternate, never mix."""
    from verl.utils.tokenizer import hf_tokenizer

    tokenizer = hf_tokenizer(settings.model)
    scripts = {
        "adaptive": request_script(
            float(settings.video_seconds), settings.initial_frames, settings.requested_frames, settings.seed
        ),
        "single_turn": lambda request_id, turn: ANSWER,
    }
    forced = ForcedPolicyServer(server, tokenizer, scripts["adaptive"], Intervals())
    loops = {}
    for method, config in configs.items():
        loop = make_agent_loop(
            settings.model, forced, config, prompt_length=prompt_length, response_length=response_length
        )
        decode = Intervals()
        loop.sampler = TimedSampler(loop.sampler, decode)
        loops[method] = (loop, decode)
        print(f"[rollout] warm-up: {method}, {settings.warmup} dialogues", flush=True)
        forced.script = scripts[method]
        run_batch(method, loop, forced, decode, rows_for(settings.warmup, settings.group, videos))
    results = []
    with py_spy(Path(settings.profile) if settings.profile else None):
        for repeat in range(settings.repeats):
            for count in settings.dialogues:
                rows = rows_for(count, settings.group, videos)
                for method, (loop, decode) in loops.items():
                    forced.script = scripts[method]
                    entry = run_batch(method, loop, forced, decode, rows)
                    entry.update(prefix_caching=settings.prefix_caching, repeat=repeat)
                    results.append(entry)
                    print(
                        f"[rollout] {method} x{count} (repeat {repeat}): {entry['dialogues_per_s']:.1f} dialogues/s, "
                        f"engine idle {entry['engine_idle_share']:.1%}, stops {entry['stop_reasons']}",
                        flush=True,
                    )
    return {"settings": dataclasses.asdict(settings), "results": results, "medians": medians(results)}


@contextlib.contextmanager
def py_spy(out: Path | None) -> Iterator[None]:
    """Sample this process and its children (vLLM's engine core) with py-spy while the block runs.

    Writes ``out`` (py-spy's raw stacks) and ``out`` with ``.summary.txt`` (see ``profile_summary.py``). A
    missing py-spy or one refused by the host (ptrace) costs the profile, never the benchmark.
    """
    if out is None:
        yield
        return
    found = shutil.which("py-spy")  # scripts/gpu/bench_rollout.sh puts the staged one on PATH
    if found is None:
        logger.warning("py-spy not found on PATH; no profile")
        yield
        return
    command = [found, "record", "--pid", str(os.getpid()), "--format", "raw", "--threads", "--subprocesses"]
    command += ["--nonblocking", "--rate", "100", "--output", str(out)]
    sampler = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # let it attach before the timed work starts
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        log, _ = sampler.communicate(timeout=120)
        if not out.is_file():
            logger.warning("py-spy wrote no profile (exit %s): %s", sampler.returncode, log[-500:])
        else:
            with out.open() as handle:
                summary = profile_summary.text(profile_summary.summarize(profile_summary.parse(handle), top=15))
            out.with_suffix(".summary.txt").write_text(log[-300:] + "\n" + summary + "\n")


def medians(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (batch size, method): the median of every number over the repeats, and the repeats' spread."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for entry in results:
        groups.setdefault((entry["dialogues"], entry["method"]), []).append(entry)
    summary = []
    for (count, method), entries in sorted(groups.items()):
        row: dict[str, Any] = {"dialogues": count, "method": method, "repeats": len(entries)}
        for key in MEDIAN_KEYS:
            row[key] = statistics.median(entry[key] for entry in entries)
        hits = [entry["engine"]["prefix_cache_hit_rate"] for entry in entries if "engine" in entry]
        row["prefix_cache_hit_rate"] = statistics.median(hits) if hits else None
        rates = [entry["dialogues_per_s"] for entry in entries]
        row["dialogues_per_s_range"] = [min(rates), max(rates)]
        row["prefix_caching"] = entries[0]["prefix_caching"]
        summary.append(row)
    return summary


MEDIAN_KEYS = (
    "wall_s",
    "dialogues_per_s",
    "generated_tokens_per_s",
    "engine_idle_share",
    "outside_generate_share_mean",
    "decode_overlapping_engine_share",
    "frames_used_mean",
    "assistant_turns_mean",
)


def table(payload: dict[str, Any]) -> str:
    """The printed summary: medians per (batch, method), then adaptive over single-turn throughput."""
    header = [
        "prefix cache",
        "dialogues",
        "method",
        "dialogues/s (range)",
        "gen tok/s",
        "engine idle",
        "outside generate",
        "decode overlapped",
        "prefix hit",
        "frames",
        "turns",
    ]
    rows = []
    for entry in payload["medians"]:
        hit = entry["prefix_cache_hit_rate"]
        low, high = entry["dialogues_per_s_range"]
        rows.append(
            [
                "on" if entry["prefix_caching"] else "off",
                entry["dialogues"],
                entry["method"],
                f"{entry['dialogues_per_s']:.2f} ({low:.2f}-{high:.2f})",
                f"{entry['generated_tokens_per_s']:.0f}",
                f"{entry['engine_idle_share']:.1%}",
                f"{entry['outside_generate_share_mean']:.1%}",
                f"{entry['decode_overlapping_engine_share']:.1%}",
                "-" if hit is None else f"{hit:.1%}",
                f"{entry['frames_used_mean']:.1f}",
                f"{entry['assistant_turns_mean']:.1f}",
            ]
        )
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    by_batch: dict[int, dict[str, float]] = {}
    for entry in payload["medians"]:
        by_batch.setdefault(entry["dialogues"], {})[entry["method"]] = entry["dialogues_per_s"]
    for count, rates in sorted(by_batch.items()):
        if {"adaptive", "single_turn"} <= rates.keys():
            lines.append(
                f"{count} dialogues: adaptive runs at {rates['adaptive'] / rates['single_turn']:.2f}x the "
                "dialogues/s of single-turn with the same frames (medians; target >= 0.9)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="videos (and the tiny model without --model); default OUT/work")
    parser.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    parser.add_argument("--model", help="a Qwen2.5-VL directory; default: build the tiny random one under --work")
    parser.add_argument("--dialogues", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--group", type=int, default=8, help="GRPO n: rollouts per question")
    parser.add_argument("--initial-frames", type=int, default=4)
    parser.add_argument("--requested-frames", type=int, default=4)
    parser.add_argument("--video-seconds", type=int, default=30)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--prefix-caching", choices=("on", "off"), default="on")
    parser.add_argument("--warmup", type=int, default=8, help="untimed dialogues per method first")
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per (size, method); medians reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-workers", type=int, default=DecodingConfig.decode_workers)
    parser.add_argument("--enforce-eager", choices=("on", "off"), default="on", help="off: CUDA graphs, as verl")
    parser.add_argument("--profile", action="store_true", help="py-spy the timed batches: OUT/profile_<name>.txt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or args.out / "work"
    model = model_or_tiny(args.model, work)
    name = f"rollout_{args.backend}_prefix_{args.prefix_caching}" + ("" if args.enforce_eager == "on" else "_graphs")
    settings = Settings(
        backend=args.backend,
        model=model,
        dialogues=tuple(args.dialogues),
        group=min(args.group, min(args.dialogues)),
        initial_frames=args.initial_frames,
        requested_frames=args.requested_frames,
        video_seconds=args.video_seconds,
        videos=args.videos,
        prefix_caching=args.prefix_caching == "on",
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
        decode_workers=args.decode_workers,
        enforce_eager=args.enforce_eager == "on",
        profile=str(args.out / f"profile_{name}.txt") if args.profile else None,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    payload = run(settings, work)
    payload["seconds"] = time.perf_counter() - began
    payload["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    text = table(payload)
    print(text)
    (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{name}.txt").write_text(text + "\n")
    print(f"wrote {args.out / name}.json and .txt", flush=True)


if __name__ == "__main__":
    main()
