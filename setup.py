"""Sparse-Video-R1: a verl extension that trains video VLMs to request the frames they need."""

from setuptools import find_packages, setup

# Importing verl's agent loop on a CPU-only machine needs these on top of verl's own requirements.
VERL_AGENT_LOOP_RUNTIME = ["cachetools", "uvicorn", "fastapi", "pyzmq", "msgspec"]

setup(
    name="sparse-video-r1",
    version="0.1.0",
    description="Multi-turn adaptive frame selection for video QA, trained with verl GRPO",
    packages=find_packages(include=["sparse_video_r1", "sparse_video_r1.*"]),
    python_requires=">=3.10",
    install_requires=[
        "verl==0.9.1",
        "transformers>=5.0,<5.11",
        "decord>=0.6.0",
        "qwen-vl-utils>=0.0.14",
        "pillow",
        "numpy",
        "pandas",
        "pyarrow",
        "tqdm",
        # PyAV decodes the frames (env/frames/decoder.py) and writes generated videos; 19.0.2 rejects
        # av.open(metadata_errors=...), which the decoder passes.
        "av>=14,<19",
        "matplotlib",  # evaluation plots, training curves
        # The template's default tracker (trainer.logger [console, tensorboard]) and the curves tool read/write
        # TensorBoard event files; verl's default v1 trainer needs TransferQueue (verl's "verl-core" extra).
        "tensorboard",
        "TransferQueue>=0.1.10",
        *VERL_AGENT_LOOP_RUNTIME,
    ],
    extras_require={
        # The GPU training stack: vLLM 0.24.0 and torch 2.11 as verl 0.9.1 pins them.
        "gpu": ["verl[vllm]==0.9.1"],
        "test": ["pytest>=8", "hypothesis>=6", "ruff>=0.6"],
    },
)
