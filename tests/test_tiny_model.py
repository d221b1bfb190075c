"""The tiny random Qwen2.5-VL loads through the Auto classes exactly like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from sparse_video_r1.synthetic.tiny_model import QWEN_SPECIAL_TOKENS, build_tiny_qwen2_5_vl, main

VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> Qwen2_5_VLProcessor:
    return AutoProcessor.from_pretrained(model_dir)


def two_image_messages() -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Frame at 1.0s:"},
                {"type": "image"},
                {"type": "text", "text": "Frame at 2.5s:"},
                {"type": "image"},
                {"type": "text", "text": "Question: What happens?\nOptions:\nA. run\nB. jump"},
            ],
        }
    ]


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (56, 84), (200, 30, 30)), Image.new("RGB", (112, 56), (30, 200, 30))]


def test_auto_classes_load(model_dir: Path, processor: Qwen2_5_VLProcessor) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "qwen2_5_vl"
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(AutoTokenizer.from_pretrained(model_dir)).__name__ == "Qwen2Tokenizer"
    assert processor.image_processor.patch_size == 14 and processor.image_processor.merge_size == 2
    assert processor.video_processor is not None
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    assert model.dtype == torch.bfloat16
    total_bytes = sum(f.stat().st_size for f in model_dir.iterdir())
    assert total_bytes < 8 * 2**20


def test_special_token_ids_match_config(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    assert list(ids.values()) == list(range(ids["<|endoftext|>"], ids["<|endoftext|>"] + len(QWEN_SPECIAL_TOKENS)))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    text = config.text_config
    assert (text.eos_token_id, text.pad_token_id, text.bos_token_id) == (
        ids["<|im_end|>"],
        ids["<|endoftext|>"],
        ids["<|endoftext|>"],
    )
    assert text.vocab_size % 64 == 0 and text.vocab_size >= len(tokenizer)
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == ids["<|im_end|>"]
    for token in QWEN_SPECIAL_TOKENS:  # special tokens are atomic, never split by BPE
        assert tokenizer.encode(token, add_special_tokens=False) == [ids[token]]


def test_chat_template_renders_blocks(processor: Qwen2_5_VLProcessor) -> None:
    text = processor.apply_chat_template(two_image_messages(), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.count(VISION_BLOCK) == 2
    assert text.endswith("B. jump<|im_end|>\n<|im_start|>assistant\n")
    numbered = processor.apply_chat_template(two_image_messages(), tokenize=False, add_vision_id=True)
    assert f"Picture 1: {VISION_BLOCK}" in numbered and f"Picture 2: {VISION_BLOCK}" in numbered
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.tokenizer.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    assert "<|vision_start|><|video_pad|><|vision_end|>?" in processor.apply_chat_template(video, tokenize=False)


def test_processor_expands_image_pads(processor: Qwen2_5_VLProcessor) -> None:
    text = processor.apply_chat_template(two_image_messages(), tokenize=False, add_generation_prompt=True)
    out = processor(text=[text], images=frames(), return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 6, 4], [1, 4, 8]]
    n_pads = int((out["input_ids"] == processor.image_token_id).sum())
    assert n_pads == int(out["image_grid_thw"].prod(-1).sum()) // 4 == 6 + 8
    assert out["pixel_values"].shape == (24 + 32, 3 * 2 * 14 * 14)


@pytest.mark.parametrize(
    ("text", "max_tokens"),
    [("<answer>B</answer>", 5), ("<think>", 2), ("</think>", 3), ("<frames>", 2), ("Question:", 2), ("Options:", 2)],
)
def test_protocol_strings_are_few_tokens(processor: Qwen2_5_VLProcessor, text: str, max_tokens: int) -> None:
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) <= max_tokens
    assert processor.tokenizer.decode(ids) == text


def test_vocab_size_in_range(processor: Qwen2_5_VLProcessor) -> None:
    assert 2000 <= len(processor.tokenizer) <= 4000


def test_forward_with_images(model_dir: Path, processor: Qwen2_5_VLProcessor) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = processor.apply_chat_template(two_image_messages(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=frames(), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_and_cli(tmp_path: Path, model_dir: Path) -> None:
    main([str(tmp_path / "cli")])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (model_dir / name).read_bytes()
    other = build_tiny_qwen2_5_vl(tmp_path / "seed1", seed=1)
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("shape", "published_billions", "vocab_rows", "tied"),
    # Parameter counts the hub lists for Qwen/Qwen2.5-VL-3B-Instruct (3.75B) and -7B-Instruct (8.29B).
    [("3b", 3.75, 151936, True), ("7b", 8.29, 152064, False)],
)
def test_real_size_shapes_have_the_published_parameter_counts(shape, published_billions, vocab_rows, tied):
    """Built on the meta device: the dimensions, not the weights, are what memory and speed depend on."""
    from sparse_video_r1.synthetic.tiny_model import SHAPES, build_config, default_corpus, train_tokenizer

    config = build_config(train_tokenizer(default_corpus()), shape=SHAPES[shape])
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert round(model.num_parameters() / 1e9, 2) == published_billions
    assert model.lm_head.weight.shape[0] == vocab_rows
    assert config.tie_word_embeddings is tied
    assert len(model.model.visual.blocks) == 32
    assert config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]  # head_dim 128, as Qwen's
