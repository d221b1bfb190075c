"""scripts/model_bf16.py: the needle RL models come back and are committed in bfloat16, the weights vLLM served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import script_env
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def float32_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained a little, in float32 as the needle's SFT and verl's checkpoints save it (the tiny model
    itself is saved in bfloat16): weights that bfloat16 rounds."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    out = tmp_path_factory.mktemp("float32") / "model"
    model.save_pretrained(out)
    for extra in tiny_model_dir.iterdir():  # tokenizer, processor, chat template
        if extra.is_file() and not (out / extra.name).exists():
            (out / extra.name).write_bytes(extra.read_bytes())
    return out


def test_bf16_copy_holds_the_weights_rounded_as_vllm_loads_them_and_widens_back(
    float32_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bf16"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "model_bf16.py"), str(float32_model_dir), str(copy)],
        env=script_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    original = {k: v for shard in sorted(float32_model_dir.glob("*.safetensors")) for k, v in load_file(shard).items()}
    narrowed = {k: v for shard in sorted(copy.glob("*.safetensors")) for k, v in load_file(shard).items()}
    assert narrowed.keys() == original.keys()
    for name, tensor in original.items():  # vLLM's loader copies float32 into bfloat16 parameters: round to nearest
        assert tensor.dtype == torch.float32 and narrowed[name].dtype == torch.bfloat16
        assert torch.equal(narrowed[name], tensor.to(torch.bfloat16)), name
    assert f"{len(original)} tensors stored in bfloat16" in result.stderr
    assert json.loads((copy / "config.json").read_text())["dtype"] == "bfloat16"
    assert (copy / "tokenizer.json").read_bytes() == (float32_model_dir / "tokenizer.json").read_bytes()
    widened = Qwen2_5_VLForConditionalGeneration.from_pretrained(copy, dtype=torch.float32)
    for name, parameter in widened.state_dict().items():
        if name in narrowed:
            assert parameter.dtype == torch.float32 and torch.equal(parameter, narrowed[name].float()), name


def test_bf16_copy_refuses_a_missing_source_and_an_existing_target(tiny_model_dir: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from model_bf16 import to_bf16

    with pytest.raises(FileNotFoundError, match="no model folder at"):
        to_bf16(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists"):
        to_bf16(tiny_model_dir, tmp_path / "taken")
