"""A copy of a Hugging Face model folder whose floating-point weights are stored in bfloat16.

Why: vLLM serves the needle models in bfloat16 (``sparse_video_r1.serving.vllm_server``), so the bfloat16 copy holds
exactly the weights the held-out table measured (both round to nearest even), at half the bytes: six RL models then
fit in one file that a device call brings back, and in the repository. ``from_pretrained(dtype=float32)`` widens
them again without loss. Keep float32 where training continues from the weights (an SFT cold start, a checkpoint).

    python scripts/model_bf16.py SRC_DIR DST_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("model_bf16")


def to_bf16(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` with every floating tensor of its ``*.safetensors`` in bfloat16 and the config's
    ``dtype`` saying so. Returns how many tensors were narrowed."""
    if not src.is_dir():
        raise FileNotFoundError(f"no model folder at {src}")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; not overwriting it")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    narrowed = 0
    for shard in sorted(src.glob("*.safetensors")):
        tensors = load_file(shard)
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.dtype != torch.bfloat16:
                tensors[name] = tensor.to(torch.bfloat16)
                narrowed += 1
        save_file(tensors, dst / shard.name, metadata={"format": "pt"})
    config = dst / "config.json"
    if config.exists():
        settings = json.loads(config.read_text())
        for section in (settings, *(v for v in settings.values() if isinstance(v, dict))):
            for key in ("dtype", "torch_dtype"):
                if key in section:
                    section[key] = "bfloat16"
        config.write_text(json.dumps(settings, indent=2) + "\n")
    return narrowed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="HF model folder (config.json, *.safetensors, tokenizer files)")
    parser.add_argument("dst", type=Path, help="where the bfloat16 copy goes (must not exist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    narrowed = to_bf16(args.src, args.dst)
    log.info("%s -> %s: %d tensors stored in bfloat16", args.src, args.dst, narrowed)


if __name__ == "__main__":
    main()
