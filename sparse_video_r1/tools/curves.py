"""A training run's first-look curves as one PNG, from what verl's tracker wrote.

    python -m sparse_video_r1.tools.curves RUN_DIR [--out RUN_DIR/curves.png] [--smooth 10]

Reads TensorBoard event files (``trainer.logger`` with ``tensorboard``) or verl's file logger's JSON lines
(``file``: ``{"step": N, "data": {...}}`` per line) found under ``RUN_DIR``, and draws reward, accuracy (with the
NExT-QA groups), frames, turns, request share and stop reasons against step: the raw value faint, a rolling mean
over it. The legacy trainer's ``timing_s/dialogue/…`` names are read as ``dialogue/…``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sparse_video_r1.data.nextqa import GROUP_ORDER
from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.training.dialogue_metrics import PREFIX

logger = logging.getLogger(__name__)

#: step -> metric name -> value.
Scalars = dict[int, dict[str, float]]

LEGACY_PREFIX = f"timing_s/{PREFIX}/"
DEFAULT_SMOOTHING = 10


def rolling(values: Sequence[float], window: int, statistic: Callable[..., float] = statistics.fmean) -> list[float]:
    """``statistic`` of each value and the ``window - 1`` before it."""
    return [statistic(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def _canonical(name: str) -> str:
    return name[len("timing_s/") :] if name.startswith(LEGACY_PREFIX) else name


def read_file_logger(paths: Iterable[Path]) -> Scalars:
    """verl's ``file`` logger lines; a later file wins for a step two files hold (a resumed run); torn lines skipped."""
    scalars: Scalars = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            values = scalars.setdefault(int(entry["step"]), {})
            for name, value in entry["data"].items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[_canonical(name)] = float(value)
    return scalars


def read_tensorboard(folders: Iterable[Path]) -> Scalars:
    """Every scalar of the event files in ``folders`` (one TensorBoard run each)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: Scalars = {}
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for point in events.Scalars(tag):
                scalars.setdefault(int(point.step), {})[_canonical(tag)] = float(point.value)
    return scalars


def read_run(run_dir: str | Path) -> Scalars:
    """A run's scalars: TensorBoard event files under ``run_dir`` if any, else ``*.jsonl`` file-logger output."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return read_file_logger([run_dir])
    event_folders = sorted({path.parent for path in run_dir.rglob("events.out.tfevents.*")})
    if event_folders:
        return read_tensorboard(event_folders)
    logs = [p for p in sorted(run_dir.rglob("*.jsonl")) if _is_file_logger(p)]
    if not logs:
        raise FileNotFoundError(f"no TensorBoard events and no verl file-logger *.jsonl under {run_dir}")
    return read_file_logger(logs)


def _is_file_logger(path: Path) -> bool:
    with path.open(encoding="utf-8") as lines:
        first = lines.readline()
    try:
        entry = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(entry, dict) and set(entry) == {"step", "data"}


def _series(scalars: Scalars, name: str) -> tuple[list[int], list[float]]:
    points = [(step, values[name]) for step, values in sorted(scalars.items()) if name in values]
    return [p[0] for p in points], [p[1] for p in points]


#: (title, [(metric, label)]): the first metric found of a ``|``-separated list is drawn.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("reward (mean)", [("critic/score/mean|dialogue/score/mean", "reward")]),
    (
        "accuracy",
        [(f"{PREFIX}/accuracy/mean", "all")] + [(f"{PREFIX}/accuracy/{group}", group) for group in GROUP_ORDER],
    ),
    ("frames shown per dialogue", [(f"{PREFIX}/frames_shown/mean", "mean"), (f"{PREFIX}/frames_shown/max", "max")]),
    ("assistant turns per dialogue", [(f"{PREFIX}/assistant_turns/mean", "mean")]),
    ("share of dialogues that requested", [(f"{PREFIX}/request_share", "requested")]),
    ("how dialogues end (share)", [(f"{PREFIX}/stop/{reason.value}", reason.value) for reason in StopReason]),
]


def _resolve(scalars: Scalars, names: str) -> str | None:
    present = {name for values in scalars.values() for name in values}
    return next((name for name in names.split("|") if name in present), None)


def plot_curves(scalars: Scalars, path: str | Path, *, smooth: int = DEFAULT_SMOOTHING, title: str = "") -> Path:
    """Draw :data:`PANELS` (a panel with no data says so) and save the PNG."""
    figure, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for axis, (panel_title, lines) in zip(axes.flat, PANELS, strict=True):
        drawn = 0
        for index, (names, label) in enumerate(lines):
            name = _resolve(scalars, names)
            if name is None:
                continue
            steps, values = _series(scalars, name)
            if panel_title.startswith("how dialogues end") and not any(values):
                continue  # a stop reason that never happened
            colour = f"C{index}"
            axis.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            window = min(smooth, len(values))
            axis.plot(steps, rolling(values, window), color=colour, linewidth=1.8, label=label)
            drawn += 1
        if drawn:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes, color="grey")
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title}  (faint: per step; solid: {smooth}-step rolling mean)".strip(), fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run's folder (TensorBoard events or verl file-logger jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)")
    parser.add_argument("--smooth", type=int, default=DEFAULT_SMOOTHING, help="rolling-mean window, in steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    scalars = read_run(args.run_dir)
    out = args.out or (args.run_dir if args.run_dir.is_dir() else args.run_dir.parent) / "curves.png"
    plot_curves(scalars, out, smooth=args.smooth, title=args.run_dir.name)
    logger.info("%d steps -> %s", len(scalars), out)


if __name__ == "__main__":
    main()
