"""After a weight update, does vLLM show a repeated frame with the new vision weights? (verl #6523)

vLLM caches vision-encoder outputs (and prefix KV blocks) by image hash, and NExT-QA shows one video to
~10 questions and to every step. If a weight sync left those caches alone, a frame seen before the update
would be encoded by the old vision tower. verl 0.9.1 clears them around a sync (``vLLMHttpServer._sleep_hybrid``
calls ``reset_encoder_cache``, ``wake_up`` calls ``reset_prefix_cache``); this script measures both sides:

1. prompt log-probs of a text that follows one image, with the model's vision tower as built;
2. the vision merger's output layer negated in the running engine (what a weight sync does to it);
3. the same prompt again, caches untouched;
4. the same prompt after the cache resets verl makes;
5. a transformers forward pass of the negated model on the same prompt: the reference for "new weights".

    python scripts/gpu/vision_cache_check.py --model MODEL_DIR --out result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger("vision_cache_check")

#: The parameters changed: the vision merger's last linear layer, in vLLM's and in transformers' naming.
PERTURBED_SUFFIXES = ("visual.merger.mlp.2.weight", "visual.merger.mlp.2.bias")
QUESTION = "What is shown in the frame? Answer with one word of the options red, green or blue."


def negate_merger(model: torch.nn.Module) -> list[str]:
    """Negate the merger's output layer in place (exactly reproducible in both frameworks)."""
    names = []
    for name, parameter in model.named_parameters():
        if name.endswith(PERTURBED_SUFFIXES):
            parameter.data.neg_()
            names.append(name)
    return names


def test_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8))


def prompt_text(processor: Any) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def text_positions(input_ids: list[int], vision_end_id: int) -> list[int]:
    """Positions of the tokens after the image, whose log-probs depend on its features."""
    end = input_ids.index(vision_end_id)
    return list(range(end + 1, len(input_ids)))


def vllm_logprobs(llm: Any, text: str, image: Image.Image, positions: list[int]) -> np.ndarray:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    (output,) = llm.generate([{"prompt": text, "multi_modal_data": {"image": image}}], params, use_tqdm=False)
    ids = output.prompt_token_ids
    return np.array([output.prompt_logprobs[p][ids[p]].logprob for p in positions])


def hf_logprobs(model_dir: str, text: str, image: Image.Image) -> tuple[np.ndarray, list[int], list[str]]:
    """Log-probs of the text after the image under the negated model, those tokens' positions, what was negated."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
    names = negate_merger(model)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to("cuda")
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    ids = inputs["input_ids"][0].tolist()
    positions = text_positions(ids, processor.tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    logprobs = torch.log_softmax(logits, dim=-1)
    values = np.array([logprobs[p - 1, ids[p]].item() for p in positions])
    return values, positions, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # apply_model sends a function to vLLM's worker process; vLLM pickles it only when allowed to.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    from transformers import AutoProcessor
    from vllm import LLM

    processor = AutoProcessor.from_pretrained(args.model)
    text, image = prompt_text(processor), test_image()
    reference, positions, hf_names = hf_logprobs(args.model, text, image)
    torch.cuda.empty_cache()

    llm = LLM(
        model=args.model,
        enable_prefix_caching=True,
        enable_sleep_mode=True,
        enforce_eager=True,
        gpu_memory_utilization=args.gpu_memory_utilization,
        limit_mm_per_prompt={"image": 1},
        max_model_len=2048,
        seed=0,
    )
    before = vllm_logprobs(llm, text, image, positions)
    vllm_names = llm.apply_model(negate_merger)[0]
    untouched = vllm_logprobs(llm, text, image, positions)
    # What verl 0.9.1's vLLM server does around a weight sync (vllm_async_server.py: _sleep_hybrid, wake_up).
    llm.llm_engine.reset_encoder_cache()
    llm.reset_prefix_cache()
    reset = vllm_logprobs(llm, text, image, positions)

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max())

    result = {
        "model": args.model,
        "text_tokens_compared": len(positions),
        "perturbed_parameters": {"vllm": vllm_names, "transformers": hf_names},
        "max_abs_logprob_gap": {
            "old_weights_vs_new_weights_reference": gap(before, reference),
            "caches_untouched_vs_old_weights": gap(untouched, before),
            "caches_untouched_vs_new_weights_reference": gap(untouched, reference),
            "after_verl_resets_vs_new_weights_reference": gap(reset, reference),
            "after_verl_resets_vs_old_weights": gap(reset, before),
        },
        "mean_logprob": {
            "old_weights": float(before.mean()),
            "caches_untouched": float(untouched.mean()),
            "after_verl_resets": float(reset.mean()),
            "new_weights_reference": float(reference.mean()),
        },
    }
    gaps = result["max_abs_logprob_gap"]
    result["stale_without_reset"] = (
        gaps["caches_untouched_vs_old_weights"] < gaps["caches_untouched_vs_new_weights_reference"]
    )
    result["fresh_after_verl_resets"] = (
        gaps["after_verl_resets_vs_new_weights_reference"] < 0.25 * gaps["old_weights_vs_new_weights_reference"]
    )
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
