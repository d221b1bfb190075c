"""Fuzz the two places where untrusted bytes enter a rollout: the model's text and the video files.

(a) :func:`sparse_video_r1.env.protocol.parse_turn` (and the reward's :func:`parse_final_answer`) on hypothesis-
generated assistant turns built from the protocol's own pieces (tags, think blocks, timestamps of every
shape, huge digit strings, clock times, junk), so most examples reach deep into the parser rather than
failing at the first check. Each outcome is counted; any exception, or a result that breaks the parser's
guarantees (finite, sorted, unique, at most ``MAX_PARSED_TIMESTAMPS`` timestamps; an answer among the
options), is recorded with its input.

(b) :class:`sparse_video_r1.env.frames.FrameSampler` on randomly corrupted copies of real H.264 mp4s (byte flips,
truncation at a random offset, zeroed ranges), doing what ``Episode.start`` and a frame request do: ``info``,
the uniform initial frames, a few random timestamps and the last frame. Outcomes: ``ok_intact`` (every frame
carries its own painted index), ``ok_damaged`` (frames came back but some show another or no index: the
decoder concealed the damage), a :class:`VideoError` reason slug, ``unhandled:<Type>`` (anything else: a
bug), or ``crash`` / ``hang`` when the worker process died or stopped answering. Each file is probed in a
separate worker process so that a segfault in the decoder (FFmpeg via PyAV) is counted instead of ending the run.

    python scripts/fuzz_reliability.py --out docs/results/reliability/fuzz.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import multiprocessing
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

try:
    import sparse_video_r1  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "sparse_video_r1":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av
import hypothesis
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_video_r1.env import frames, protocol
from sparse_video_r1.env.frames import FrameSampler, VideoError, uniform_timestamps
from sparse_video_r1.synthetic.videos import index_image, read_frame_index, write_index_video

logger = logging.getLogger("fuzz_reliability")

#: How many failing inputs are quoted per class; the counts say how many there were.
MAX_EXAMPLES_KEPT = 5
#: Characters of a failing input kept in the report.
MAX_QUOTED_CHARS = 300
#: Seconds a worker may take on one file before it is declared hung (the sampler's own timeout is shorter).
WORKER_TIMEOUT_S = 60.0
#: The sampler's decode timeout in the workers: a corrupt file must not hang the fuzzer either.
DECODE_TIMEOUT_S = 20.0
MIN_PIXELS = 16 * 28 * 28
MAX_PIXELS = 64 * 28 * 28


# ---------------------------------------------------------------------------------------------------
# (a) the parser

_DIGITS = st.text("0123456789", min_size=1, max_size=12)
_HUGE_DIGITS = st.integers(300, 5000).map(lambda n: "9" * n)
_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-1e4, 1e4, allow_nan=False).map(lambda x: f"{x:.3f}"),
    st.integers(-(10**6), 10**6).map(str),
    _DIGITS,
    _HUGE_DIGITS,
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e308", "1e309", "-1e308", "1e-400", "-0", ".5", "5.", "1e4"]),
)
_CLOCK = st.one_of(
    st.tuples(st.one_of(_DIGITS, _HUGE_DIGITS), _DIGITS).map(lambda p: f"{p[0]}:{p[1]}"),
    st.tuples(st.one_of(_DIGITS, _HUGE_DIGITS), _DIGITS, _DIGITS).map(lambda p: f"{p[0]}:{p[1]}:{p[2]}"),
)
_UNIT = st.sampled_from(["", "s", " s", "sec", " seconds", "S", "ms", "min"])
_TIMESTAMP = st.one_of(st.tuples(_NUMBER, _UNIT).map("".join), _CLOCK, st.text(max_size=8))
_SEPARATOR = st.sampled_from([",", ", ", ";", " ", "\n", ",,", " , ", "-", "/"])


@st.composite
def _frames_body(draw: st.DrawFn) -> str:
    items = draw(st.lists(_TIMESTAMP, max_size=draw(st.sampled_from([3, 8, 70, 200]))))
    body = "".join(item + draw(_SEPARATOR) for item in items)
    return draw(st.sampled_from(["{}", "[{}]", "({})", " {} "])).format(body)


_CLEAN_TIMESTAMP = st.one_of(
    st.floats(-1e3, 1e4, allow_nan=False).map(lambda x: f"{x:.2f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.tuples(st.integers(0, 99), st.integers(0, 59)).map(lambda p: f"{p[0]}:{p[1]:02d}"),
)
#: Lists of valid timestamps only (finite, in range or not); lengths uniform up to past MAX_PARSED_TIMESTAMPS
#: (hypothesis alone keeps lists short).
_CLEAN_FRAMES_BODY = st.integers(1, 100).flatmap(
    lambda n: st.lists(_CLEAN_TIMESTAMP, min_size=n, max_size=n).map(", ".join)
)

_LETTER_BODY = st.one_of(
    st.sampled_from([*"ABCDEFZabcdez", "(B)", "B.", "B)", "[C]", "Option D", "Answer: a", "the answer is E"]),
    st.tuples(st.sampled_from(list("ABCDEabcde")), st.text(max_size=20)).map(lambda p: f"{p[0]}{p[1]}"),
    st.text(max_size=20),
)
_TAG = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "<frames>", "</frames>", "<THINK>", "<Answer>", "<frames >"]
)
_JUNK = st.one_of(st.text(max_size=40), st.sampled_from(["\n", " ", "I think", "<|im_end|>", "<", ">", "</", "&lt;"]))


@st.composite
def _piece(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["think", "answer", "frames", "tag", "junk", "unclosed"]))
    if kind == "think":
        return f"<think>{draw(st.lists(_piece(), max_size=2).map(''.join) if draw(st.booleans()) else _JUNK)}</think>"
    if kind == "answer":
        return f"<answer>{draw(_LETTER_BODY)}</answer>"
    if kind == "frames":
        return f"<frames>{draw(_frames_body())}</frames>"
    if kind == "tag":
        return draw(_TAG)
    if kind == "unclosed":
        return draw(st.sampled_from(["<think>", "<answer>", "<frames>"])) + draw(_JUNK)
    return draw(_JUNK)


_WELL_FORMED = st.one_of(
    st.tuples(_JUNK, _LETTER_BODY).map(lambda p: f"<think>{p[0]}</think><answer>{p[1]}</answer>"),
    st.tuples(_JUNK, st.one_of(_CLEAN_FRAMES_BODY, _frames_body())).map(
        lambda p: f"<think>{p[0]}</think><frames>{p[1]}</frames>"
    ),
)
#: Mostly structured turns (weighted by repetition), some raw text and bytes.
_TURN = st.one_of(
    _WELL_FORMED,
    _WELL_FORMED,
    st.lists(_piece(), max_size=5).map("".join),
    st.lists(_piece(), max_size=5).map("".join),
    st.text(max_size=200),
    st.binary(max_size=100).map(lambda b: b.decode("utf-8", errors="replace")),
)


@dataclass
class Tally:
    """Outcome counts plus a few quoted inputs for every class that is a bug."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    examples: int = 0

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def fail(self, outcome: str, **details: Any) -> None:
        self.counts[outcome] += 1
        kept = self.failures.setdefault(outcome, [])
        if len(kept) < MAX_EXAMPLES_KEPT:
            kept.append(details)

    @property
    def failed(self) -> int:
        return sum(self.counts[name] for name in self.failures)

    def as_json(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "failures": self.failed,
            "failure_examples": self.failures,
        }


def _quote(text: str) -> str:
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + f"... ({len(text)} chars)"


def _check_turn(tally: Tally, text: str, num_options: int) -> None:
    """Parse one turn and count its outcome; exceptions and broken guarantees are failures."""
    tally.examples += 1
    try:
        turn = protocol.parse_turn(text, num_options=num_options)
    except Exception as error:
        tally.fail(f"unhandled:{type(error).__name__}", input=_quote(text), error=_quote(str(error)))
        return
    if isinstance(turn, protocol.Invalid):
        tally.count(f"invalid:{turn.reason}")
    elif isinstance(turn, protocol.Answer):
        if turn.index >= num_options:
            tally.fail("violation:answer_out_of_range", input=_quote(text), answer=turn.letter)
        else:
            tally.count("answer")
    else:
        stamps = turn.timestamps
        ok = (
            0 < len(stamps) <= protocol.MAX_PARSED_TIMESTAMPS
            and all(math.isfinite(t) for t in stamps)
            and list(stamps) == sorted(set(stamps))
        )
        if ok:
            tally.count("frame_request")
        else:
            tally.fail("violation:bad_request", input=_quote(text), timestamps=_quote(repr(stamps)))
    try:
        protocol.parse_final_answer(text, num_options=num_options)
    except Exception as error:
        tally.fail(f"unhandled_final_answer:{type(error).__name__}", input=_quote(text), error=_quote(str(error)))


def fuzz_parser(examples: int, seed: int) -> dict[str, Any]:
    """Run ``examples`` hypothesis examples through the parser (hypothesis stops early only if it runs dry)."""
    tally = Tally()

    @settings(
        max_examples=examples,
        derandomize=False,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @given(text=_TURN, num_options=st.integers(1, 5))
    def run(text: str, num_options: int) -> None:
        _check_turn(tally, text, num_options)

    started = time.perf_counter()
    hypothesis.seed(seed)(run)()
    return {
        "examples": tally.examples,
        "seed": seed,
        **tally.as_json(),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------------------------------------------
# (b) the frame sampler


@dataclass(frozen=True)
class Source:
    """A real mp4 to corrupt and the frame count it was written with."""

    name: str
    path: Path
    num_frames: int


@dataclass(frozen=True)
class Case:
    """One corrupted copy: how it was made (enough to rebuild it) and where it is."""

    index: int
    source: str
    corruption: str
    detail: dict[str, int]
    path: str


def write_noisy_index_video(path: Path, *, num_frames: int, fps: int, width: int, height: int, seed: int) -> Path:
    """An index video with mild pixel noise, so frame data (not the container index) is most of the file.

    Clean index frames compress to a few bytes each, so nearly every random corruption of them lands in
    the ``moov`` index; noise (well inside :func:`read_frame_index`'s margins) makes the stream the target.
    """
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            picture = index_image(index, width=width, height=height).astype(np.int16)
            noisy = np.clip(picture + rng.integers(-24, 25, picture.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(noisy, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def remux_faststart(source: Path, path: Path) -> Path:
    """The same packets with the ``moov`` index moved to the front, as streaming-ready files have it."""
    with av.open(str(source)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


def write_sources(root: Path) -> list[Source]:
    """Short real H.264 mp4s of different shapes: default GOP with B-frames, short GOPs, noise, and moov first."""
    root.mkdir(parents=True, exist_ok=True)
    specs = {
        "default_gop": dict(num_frames=60, fps=10.0),
        "gop8": dict(num_frames=48, fps=24.0, keyframe_interval=8),
        "wide_gop5": dict(num_frames=30, fps=30.0, width=160, height=96, keyframe_interval=5),
    }
    sources = [
        Source(name, write_index_video(root / f"{name}.mp4", **spec), spec["num_frames"])
        for name, spec in specs.items()
    ]
    noisy = write_noisy_index_video(root / "noisy.mp4", num_frames=40, fps=10, width=128, height=96, seed=0)
    sources.append(Source("noisy", noisy, 40))
    sources.append(Source("noisy_faststart", remux_faststart(noisy, root / "noisy_faststart.mp4"), 40))
    sources.append(Source("faststart", remux_faststart(sources[0].path, root / "faststart.mp4"), 60))
    return sources


def corrupt(data: bytes, rng: random.Random) -> tuple[str, dict[str, int], bytes]:
    """One random corruption of ``data``: flipped bytes, a truncation, or a zeroed range."""
    kind = rng.choice(["byte_flips", "truncation", "zeroed_range"])
    size = len(data)
    if kind == "byte_flips":
        flips = rng.choice([1, 4, 32, 256])
        out = bytearray(data)
        for _ in range(flips):
            out[rng.randrange(size)] ^= rng.randrange(1, 256)
        return kind, {"flips": flips}, bytes(out)
    if kind == "truncation":
        offset = rng.randrange(size)
        return kind, {"offset": offset, "size": size}, data[:offset]
    start = rng.randrange(size)
    length = min(size - start, rng.choice([16, 256, 2048, size]))
    return kind, {"start": start, "length": length, "size": size}, data[:start] + bytes(length) + data[start + length :]


def probe(path: str, num_frames: int, seed: int) -> dict[str, Any]:
    """What a dialogue does with one video: info, 4 uniform frames, 2 random ones, the last one."""
    sampler = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, decode_timeout_s=DECODE_TIMEOUT_S)
    rng = random.Random(seed)
    try:
        info = sampler.info(path)
        if not (math.isfinite(info.duration) and info.duration > 0):
            return {"outcome": "violation:bad_duration", "error": repr(info)}
        timestamps = [
            *uniform_timestamps(info.duration, min(4, info.num_frames)),
            rng.uniform(0, info.duration),
            rng.uniform(0, info.duration),
            info.duration,
        ]
        served = sampler.fetch(path, timestamps)
    except VideoError as error:
        return {"outcome": error.reason, "error": _quote(str(error))}
    except Exception as error:
        return {"outcome": f"unhandled:{type(error).__name__}", "error": _quote(str(error))}
    finally:
        sampler.close()
    damaged = 0
    for frame in served:
        try:
            damaged += read_frame_index(frame.image) != frame.index
        except ValueError:
            damaged += 1
    outcome = "ok_damaged" if damaged else "ok_intact"
    return {
        "outcome": outcome,
        "frames": len(served),
        "damaged": damaged,
        "num_frames_reported": info.num_frames,
        "num_frames_written": num_frames,
    }


def _worker(conn: Connection) -> None:
    """Probe files sent over ``conn`` until it closes; FFmpeg's chatter stays on stderr."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        conn.send(probe(*job))


class Prober:
    """A worker process that probes one file at a time and is replaced when it crashes or hangs."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def run(self, path: str, num_frames: int, seed: int) -> dict[str, Any]:
        self._conn.send((path, num_frames, seed))
        try:
            if self._conn.poll(WORKER_TIMEOUT_S):
                return self._conn.recv()
            outcome = {"outcome": "hang", "error": f"no answer in {WORKER_TIMEOUT_S}s"}
        except EOFError:
            outcome = {"outcome": "crash", "error": "the worker died"}
        self._process.kill()
        self._process.join()
        outcome["error"] += f" (exit code {self._process.exitcode})"
        self._start()
        return outcome

    def close(self) -> None:
        self._conn.close()
        self._process.join(timeout=10)


def fuzz_sampler(cases: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Probe ``cases`` corrupted copies plus each intact source (which must all come back ``ok_intact``)."""
    rng = random.Random(seed)
    sources = write_sources(workdir / "sources")
    corrupted = workdir / "corrupted"
    corrupted.mkdir()
    by_kind: dict[str, Counter[str]] = {}
    tally = Tally()
    prober = Prober()
    started = time.perf_counter()
    try:
        for source in sources:
            result = prober.run(str(source.path), source.num_frames, seed)
            if result["outcome"] != "ok_intact":
                tally.fail(f"intact_source:{result['outcome']}", source=source.name, **result)
        for index in range(cases):
            source = rng.choice(sources)
            kind, detail, data = corrupt(source.path.read_bytes(), rng)
            case = Case(index, source.name, kind, detail, str(corrupted / f"{index:04d}_{source.name}_{kind}.mp4"))
            Path(case.path).write_bytes(data)
            result = prober.run(case.path, source.num_frames, seed + index)
            outcome = result["outcome"]
            by_kind.setdefault(kind, Counter())[outcome] += 1
            if outcome.startswith(("unhandled:", "violation:")) or outcome in ("crash", "hang"):
                tally.fail(outcome, **asdict(case), error=result.get("error"))
            else:
                tally.count(outcome)
            if (index + 1) % 50 == 0:
                logger.info("sampler: %d/%d corrupted files probed", index + 1, cases)
    finally:
        prober.close()
    return {
        "corrupted_files": cases,
        "seed": seed,
        "sources": {s.name: {"num_frames": s.num_frames, "bytes": s.path.stat().st_size} for s in sources},
        **tally.as_json(),
        "counts_by_corruption": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parser-examples", type=int, default=10_000)
    parser.add_argument("--videos", type=int, default=200, help="corrupted mp4 copies to probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON report here (printed either way)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger.info("parser: %d examples", args.parser_examples)
    parser_report = fuzz_parser(args.parser_examples, args.seed)
    logger.info("sampler: %d corrupted copies", args.videos)
    with tempfile.TemporaryDirectory(prefix="fuzz_reliability_") as tmp:
        sampler_report = fuzz_sampler(args.videos, args.seed, Path(tmp))
    report = {
        "command": " ".join(["python", "scripts/fuzz_reliability.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": {
            "python": platform.python_version(),
            "hypothesis": hypothesis.__version__,
            "av": av.__version__,
        },
        # The sampler is under active work: this names the exact frame modules and protocol.py that were fuzzed.
        "sha256": {
            module.__name__: hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()
            for module in (frames.common, frames.decoder, frames.readers, frames.sampler, protocol)
        },
        "parser": parser_report,
        "sampler": sampler_report,
        "unhandled_total": parser_report["failures"] + sampler_report["failures"],
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0 if report["unhandled_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
