"""Shared fixtures: the tiny random Qwen2.5-VL (built once per session) and real generated videos."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sparse_video_r1.synthetic.tiny_model import build_tiny_qwen2_5_vl
from sparse_video_r1.synthetic.videos import write_index_video


def script_env(**extra: str) -> dict[str, str]:
    """The environment to run one of the repo's shell scripts in: ``PYTHON`` is the interpreter running the tests.

    The scripts call ``${PYTHON:-python3}``; without this they would run whatever ``python3`` is first on PATH,
    which need not be the one with the package and its dependencies (a venv's python called by its path).
    """
    return {**os.environ, "PYTHON": sys.executable, **extra}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL saved with save_pretrained, as transformers and vLLM load it."""
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_model") / "tiny_qwen2_5_vl", seed=0)


VideoFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_video(tmp_path_factory: pytest.TempPathFactory) -> VideoFactory:
    """Write (once per distinct spec) a real H.264 mp4 whose frames encode their own index."""
    root = tmp_path_factory.mktemp("videos")
    written: dict[tuple, Path] = {}

    def factory(num_frames: int = 60, fps: float = 10.0, width: int = 64, height: int = 48) -> Path:
        key = (num_frames, fps, width, height)
        if key not in written:
            path = root / f"index_{num_frames}f_{fps:g}fps_{width}x{height}.mp4"
            written[key] = write_index_video(path, num_frames=num_frames, fps=fps, width=width, height=height)
        return written[key]

    return factory
