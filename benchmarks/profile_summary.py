"""Where a process's CPU time went, from a py-spy profile: samples per thread pool, then the heaviest functions.

    py-spy record --format raw --threads --subprocesses --nonblocking -o PROFILE.txt -- python benchmarks/rollout.py ...
    python benchmarks/profile_summary.py PROFILE.txt [--top 12] [--out SUMMARY.json]

py-spy's raw format is one collapsed stack per line, ``process PID:"cmd";thread (TID): name;frame;...;frame N``
(root first, N samples; a child process's stacks start with its parents'). Threads are grouped by name
without their number or a bracketed detail (``svr1-decode_3`` -> ``svr1-decode``), so a pool reads as one
line, and a function's lines are merged. Without ``--idle``, py-spy only samples threads that run, so the
shares are of CPU work, not of wall time.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_THREAD = re.compile(r"thread \((\d+)\)(?::\s*(.*))?")
_POOL_NUMBER = re.compile(r"_\d+$")
_DETAIL = re.compile(r"\s*\[.*\]$")  # "decode-decoding frames [3, 9]" -> one group for every such thread
_LINE = re.compile(r":\d+\)$")  # "f (x.py:12)" -> "f (x.py)": one entry per function


@dataclass
class ThreadGroup:
    """The samples of one process's threads that share a name (one pool), by function."""

    samples: int = 0
    inclusive: Counter = field(default_factory=Counter)
    own: Counter = field(default_factory=Counter)


def parse(lines: Iterable[str]) -> dict[tuple[str, str], ThreadGroup]:
    """Samples per (process, thread group); a function counts once per stack in ``inclusive``.

    py-spy does not always read a thread's name, so a thread is named by any sample that has it.
    """
    stacks: list[tuple[str, str, list[str], int]] = []
    names: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"line {number} is not a py-spy raw stack ('frames count'): {line[:120]!r}")
        frames = stack.split(";")
        process = "process ?"
        while frames and frames[0].startswith("process "):  # a child's stack names its parents first
            process = frames.pop(0)
        thread = "?"
        if frames and (match := _THREAD.fullmatch(frames[0])):
            frames.pop(0)
            thread = match.group(1)
            if match.group(2):
                names[thread] = _POOL_NUMBER.sub("", _DETAIL.sub("", match.group(2).strip()))
        stacks.append((process, thread, [_LINE.sub(")", frame) for frame in frames], int(count)))
    groups: dict[tuple[str, str], ThreadGroup] = defaultdict(ThreadGroup)
    for process, thread, frames, samples in stacks:
        group = groups[(_command(process), names.get(thread, "unnamed"))]
        group.samples += samples
        for function in set(frames):
            group.inclusive[function] += samples
        if frames:
            group.own[frames[-1]] += samples
    return dict(groups)


def _command(process: str) -> str:
    """``process 12:"python x.py --a"`` -> ``python x.py --a`` (the PID differs between runs)."""
    _, _, command = process.partition(":")
    return command.strip('"') or process


def summarize(groups: dict[tuple[str, str], ThreadGroup], top: int) -> list[dict[str, Any]]:
    """Per process and thread group, largest first: share of the process's samples and the top functions."""
    per_process = Counter()
    for (process, _), group in groups.items():
        per_process[process] += group.samples
    rows = []
    for (process, thread), group in sorted(groups.items(), key=lambda item: -item[1].samples):
        # Frames in (nearly) every stack of the group are its entry points, not where the time goes.
        inclusive = [(f, n) for f, n in group.inclusive.most_common() if n < 0.95 * group.samples][:top]
        rows.append(
            {
                "process": process,
                "thread": thread,
                "samples": group.samples,
                "share_of_process": group.samples / per_process[process],
                "inclusive": [{"function": f, "share": n / group.samples} for f, n in inclusive],
                "own": [{"function": f, "share": n / group.samples} for f, n in group.own.most_common(top)],
            }
        )
    return rows


def text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines.append(
            f"== {row['thread']} ({row['samples']} samples, {row['share_of_process']:.1%} of the process) "
            f"in {row['process'][:100]}"
        )
        lines += [f"   incl {item['share']:6.1%}  {item['function']}" for item in row["inclusive"]]
        lines += [f"   self {item['share']:6.1%}  {item['function']}" for item in row["own"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--min-share", type=float, default=0.01, help="leave out thread groups below this share")
    parser.add_argument("--out", type=Path, help="also write the summary as JSON")
    args = parser.parse_args(argv)
    with args.profile.open() as handle:
        rows = [r for r in summarize(parse(handle), args.top) if r["share_of_process"] >= args.min_share]
    print(text(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
