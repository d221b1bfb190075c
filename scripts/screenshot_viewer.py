"""Screenshot a dialogue viewer page in headless Chromium, to check it renders without a server or network.

    python scripts/screenshot_viewer.py EVAL_OUT viewer.png [--qids Q1,Q2] [--method adaptive] [--width W --height H]

EVAL_OUT is an ``sparse_video_r1.tools.evaluate`` output folder: its ``dialogues.html`` is shot, or with ``--qids`` a
page of just those dialogues (from ``dialogues_<method>.jsonl``), since a screenshot shows only the page's top.
It may also be a page itself (``python -m sparse_video_r1.tools.viewer rollouts ... --out page.html``).

Needs Chromium (Debian: ``apt-get install -y chromium``). The page is opened from disk with networking and
background services off, so the screenshot also shows that the page is self-contained.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from sparse_video_r1.tools import eval_report, evaluate, viewer

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def screenshot(page: Path, png: Path, *, width: int, height: int, browser: str) -> None:
    """Render ``page`` at ``width`` x ``height`` CSS pixels into ``png`` (the top of the page, not all of it)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not png.exists():
        raise RuntimeError(f"{browser} exited without writing {png}")


def page_of(out: Path, qids: list[str], method: str, page: Path) -> Path:
    """A viewer page of the given dialogues of an evaluation folder, in the order given."""
    views = {item["qid"]: item for item in evaluate.read_jsonl(out / f"dialogues_{method}.jsonl")}
    missing = [qid for qid in qids if qid not in views]
    if missing:
        raise SystemExit(f"not among the viewed dialogues of {out}: {missing}")
    viewer.write_html(page, [viewer.DialogueView.from_json(views[qid]) for qid in qids])
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="an evaluation output folder, or an HTML page")
    parser.add_argument("png", type=Path)
    parser.add_argument("--qids", default="", help="comma-separated: shoot a page of just these dialogues")
    parser.add_argument("--method", default=eval_report.ADAPTIVE, help="whose dialogues --qids picks from")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    qids = [qid for qid in args.qids.split(",") if qid]
    with tempfile.TemporaryDirectory() as tmp:
        if args.out.suffix == ".html":
            page = args.out
        elif qids:
            page = page_of(args.out, qids, args.method, Path(tmp) / "page.html")
        else:
            page = args.out / "dialogues.html"
        screenshot(page, args.png, width=args.width, height=args.height, browser=args.browser)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
