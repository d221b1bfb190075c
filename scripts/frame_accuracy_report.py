"""Count, per file of the generated container corpus, the checked times a FrameSampler answers wrongly.

    python scripts/frame_accuracy_report.py --out docs/results/reliability/frame_accuracy_after.json

The same times and reference as ``tests/test_frame_accuracy.py`` (each frame's first, middle and last instant,
20 random times, times outside the clip; a full sequential decode as the truth), but counted instead of
asserted, so a run against an older checkout (``PYTHONPATH=<checkout>``) shows what it got wrong: a picture
other than the one on screen, or a label more than half a frame interval from the shown frame's own time.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_frame_accuracy import checked_times, sequential_decode
from video_corpus import write_corpus

from sparse_video_r1.env import frames
from sparse_video_r1.env.frames import FrameSampler, VideoError
from sparse_video_r1.synthetic.videos import read_frame_index

logger = logging.getLogger("frame_accuracy_report")


def report(folder: Path) -> dict[str, dict[str, int]]:
    """Per file: times checked, wrong pictures, labels off by over half a frame, errors raised."""
    results = {}
    for name, clip in write_corpus(folder).items():
        reference = sequential_decode(clip.path)
        ends = [*reference.times[1:], reference.end]
        sampler = FrameSampler(min_pixels=4 * 784, max_pixels=16 * 784, frame_cache_bytes=0)
        counts = {"checked": 0, "wrong_picture": 0, "label_off_by_over_half_a_frame": 0, "errors": 0}
        for t in checked_times(reference, random.Random(name)):
            counts["checked"] += 1
            on_screen = max((i for i, start in enumerate(reference.times) if start <= t), default=0)
            try:
                (frame,) = sampler.fetch(clip.path, [t])
            except VideoError:
                counts["errors"] += 1
                continue
            turns = round(reference.frames[on_screen].rotation / 90) % 4
            pixels = np.rot90(np.asarray(frame.image), -turns)
            counts["wrong_picture"] += read_frame_index(pixels) != clip.shown[on_screen]
            interval = ends[on_screen] - reference.times[on_screen]
            counts["label_off_by_over_half_a_frame"] += abs(frame.timestamp - reference.times[on_screen]) > interval / 2
        results[name] = counts
        logger.info("%s: %s", name, counts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(frames.__name__).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        results = report(Path(folder))
    payload = {"command": " ".join(["python", *sys.argv]), "sampler": frames.__file__, "files": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
