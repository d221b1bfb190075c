"""Load preprocessed parquet files with verl's real RLHFDataset, as the trainer would (text-only, no processor).

A word-level tokenizer with a chat template is built in memory so the overlong-prompt filter really runs
(it applies the chat template to each row's ``prompt``) without downloading a model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from verl.utils.dataset.rl_dataset import RLHFDataset

_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Every word is one token ([UNK] for all but a few), which is all the length filter needs."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<user>": 1, "<assistant>": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def load_rlhf_dataset(parquet_files: list[Path], cache_dir: Path, max_prompt_length: int = 1024) -> RLHFDataset:
    config = OmegaConf.create(
        {
            "cache_dir": str(cache_dir),
            "prompt_key": "prompt",
            "max_prompt_length": max_prompt_length,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "return_raw_chat": True,
        }
    )
    return RLHFDataset([str(p) for p in parquet_files], tiny_tokenizer(), config, processor=None)
