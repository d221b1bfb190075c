"""A tiny, randomly initialised Qwen2.5-VL checkpoint built entirely offline.

Tests, the CPU demo and GPU smoke runs need a model directory that transformers *and* vLLM load
exactly like a real Qwen2.5-VL one (same tokenizer class, special tokens, chat template, processor
and config layout), but small enough to build in seconds and ship nowhere. Real users pass real
weights instead; nothing here is meant to produce sensible text.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

logger = logging.getLogger(__name__)

#: Qwen2.5's special tokens in Qwen's id order (``<|endoftext|>`` first, right after the BPE vocab).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: The chat template shipped with Qwen/Qwen2.5-VL-*-Instruct, verbatim.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Word salad from this list is enough for BPE to learn whole-word tokens; kept as text for readability.
_WORD_TEXT = """
the a an and or but if then else when while because so that this these those it its is are was were be been
being have has had do does did will would can could should may might must shall not no yes all any each every
some many much more most few less least other another same such only own very just also too here there where
what which who whom whose why how than as of in on at by for with about against between into through during
before after above below to from up down out off over under again further once i you he she we they me him her
us them my your his our their mine yours man woman person people child children boy girl dog cat bird horse car
bus train bike road street city house room door window table chair bed kitchen ball box bag cup bottle phone
book paper pen screen light water fire tree grass flower sky sun rain snow river sea beach mountain field park
shop school office game team player match goal score video frame clip scene shot camera image picture moment
second seconds minute minutes time start end beginning middle first last next previous early late before after
left right top bottom front back side center near far small large big little long short tall high low fast slow
red blue green yellow black white brown gray orange purple pink color colour open close walk run jump sit stand
hold carry throw catch pick put take give look see watch show find make cut cook eat drink play read write talk
say tell ask answer think know want need like use turn move stop begin happen appear enter leave fall rise pour
count many number how what action event object happens appears first second third fourth why does the person
question options option choose correct best following describe video shows during which after before answer
request frames frame timestamp timestamps more need see check look closer detail details evidence reasoning
because therefore so clearly likely possibly probably visible shown seen holding wearing using doing going
kitchen knife spoon fork plate bowl food bread cheese apple banana orange egg meat fish rice soup salad cake
shirt hat shoe shoes coat dress jacket glasses bag ring watch hand hands arm arms leg legs head face eye eyes
hair mouth foot feet finger body dance sing song music guitar piano drum stage crowd audience teacher student
doctor driver worker cook chef police soldier baby friend family mother father brother sister group couple
morning evening night day week year today yesterday tomorrow hour always never often sometimes usually again
inside outside around across along toward behind beside beneath between within without together apart away
happy sad angry afraid surprised tired calm busy quiet loud bright dark clean dirty empty full heavy light
new old young wrong right true false real different similar important possible simple easy hard difficult
building bridge tower wall floor roof stairs garden farm forest lake island desert hill valley ocean wave
wind cloud storm weather summer winter spring autumn season holiday party wedding birthday meeting class
computer keyboard mouse television radio camera film movie picture painting drawing letter word sentence story
increase decrease change changes changed remain remains stay stays repeat repeats continue continues finish
finishes finished started starting ended ending opened closed moved moving walked walking running ran jumped
looked looking watched watching played playing picked placed putting took taken gave given showed shown
system user assistant helpful requested
"""
_WORDS = tuple(_WORD_TEXT.split())

_PROTOCOL_LINES = (
    "<think>{thought}</think>\n<frames>{t1}, {t2}</frames>",
    "<think>{thought}</think>\n<answer>{letter}</answer>",
    "<think>{thought}</think>\n<frames>{t1}</frames>",
    "<answer>{letter}</answer>",
    "Frame at {t1}s:",
    "Frame at {t2}s: the {noun} is {adj}.",
    "Question: {question}\nOptions:\nA. {opt_a}\nB. {opt_b}\nC. {opt_c}\nD. {opt_d}",
    "Options: A. {opt_a} B. {opt_b} C. {opt_c} D. {opt_d}",
    "The video is {dur} seconds long. You see {n} frames.",
    "Answer with the option's letter from the given choices directly.",
    "Request more frames with <frames>t1, t2</frames> or answer with <answer>X</answer>.",
    "system\nYou are a helpful assistant.",
    "user\nHere are the frames you requested.\nFrame at {t1}s:",
    "assistant\n<think>{thought}</think>",
)


def _sentence(rng: random.Random, low: int, high: int) -> str:
    """A random word salad: frequent words get merged into single BPE tokens, which is all we need."""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + rng.choice((".", ".", "?", "!", ","))


def _timestamp(rng: random.Random) -> str:
    return rng.choice((f"{rng.uniform(0, 300):.1f}", str(rng.randint(0, 300)), f"{rng.uniform(0, 60):.2f}"))


def default_corpus(seed: int = 0, n_lines: int = 6000) -> Iterator[str]:
    """English-ish text interleaved with the frame-request dialogue vocabulary, deterministically."""
    rng = random.Random(seed)
    for i in range(n_lines):
        if i % 2:
            yield _sentence(rng, 4, 16)
            continue
        template = _PROTOCOL_LINES[(i // 2) % len(_PROTOCOL_LINES)]
        yield template.format(
            thought=_sentence(rng, 3, 12),
            t1=_timestamp(rng),
            t2=_timestamp(rng),
            letter=rng.choice("ABCD"),
            noun=rng.choice(_WORDS),
            adj=rng.choice(_WORDS),
            question=_sentence(rng, 5, 12)[:-1] + "?",
            opt_a=_sentence(rng, 1, 4),
            opt_b=_sentence(rng, 1, 4),
            opt_c=_sentence(rng, 1, 4),
            opt_d=_sentence(rng, 1, 4),
            dur=rng.randint(5, 600),
            n=rng.randint(1, 16),
        )


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 3000) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen2's exact normalizer/pre-tokenizer, then add Qwen's special tokens.

    The pipeline must match ``Qwen2Tokenizer.__init__`` because transformers 5 rebuilds that class from
    the saved vocab/merges on reload, discarding the pre-tokenizer stored in ``tokenizer.json``.
    """
    backend = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return Qwen2Tokenizer(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        errors="replace",
        clean_up_tokenization_spaces=False,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor with Qwen's default pixel bounds.

    Sizes are passed as fresh dicts: transformers 5.10's Qwen2VL processors mutate their class-level
    ``size`` dict in place when given ``min_pixels``/``max_pixels``.
    """
    patch = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}, **patch)
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}, **patch
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Qwen2.5-VL: what sets its memory and speed, whatever its weights are."""

    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    fullatt_block_indexes: tuple[int, ...]
    #: Rows of the embedding and LM head; None = the tokenizer's size rounded up to 64.
    vocab_size: int | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768


#: ``tiny`` is the 1.3M-parameter test model. ``3b`` and ``7b`` are the published dimensions of
#: Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (their ``config.json`` on the Hugging Face
#: hub: text hidden/intermediate/layers/heads/KV heads, tied embeddings, vocabulary rows; vision depth
#: 32, width 1280, MLP 3420, 16 heads, full attention in blocks 7/15/23/31, window 112). The embedding
#: and LM head keep the real row counts, so they cost what they really cost, while the token ids are
#: this module's small tokenizer's: rows past it are never produced by the processor.
SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(128, 256, 2, 4, 2, 64, 128, 2, 2, (1,)),
    "3b": ModelShape(2048, 11008, 36, 16, 2, 1280, 3420, 32, 16, (7, 15, 23, 31), 151936, True, 128000),
    "7b": ModelShape(3584, 18944, 28, 28, 4, 1280, 3420, 32, 16, (7, 15, 23, 31), 152064, False, 128000),
}


def build_config(tokenizer: Qwen2Tokenizer, *, shape: ModelShape = SHAPES["tiny"]) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of ``shape`` whose token ids are the tokenizer's (vLLM reads them from the config)."""
    head_dim = shape.text_hidden // shape.text_heads
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"text_hidden={shape.text_hidden} gives head_dim={head_dim}; need an even head_dim >= 8")
    # mrope splits head_dim/2 rotary frequencies over (t, h, w); Qwen uses 1/4, 3/8, 3/8 ([16, 24, 24] at 128).
    half = head_dim // 2
    mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = shape.vocab_size or -(-len(tokenizer) // 64) * 64
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": shape.text_hidden,
        "intermediate_size": shape.text_intermediate,
        "num_hidden_layers": shape.text_layers,
        "num_attention_heads": shape.text_heads,
        "num_key_value_heads": shape.text_kv_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "max_window_layers": shape.text_layers,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": shape.tie_word_embeddings,
    }
    vision_config = {
        "depth": shape.vision_depth,
        "hidden_size": shape.vision_hidden,
        "intermediate_size": shape.vision_intermediate,
        "num_heads": shape.vision_heads,
        "out_hidden_size": shape.text_hidden,
        "fullatt_block_indexes": list(shape.fullatt_block_indexes),
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_corpus: Iterable[str] | None = None,
    shape: ModelShape = SHAPES["tiny"],
    device: str = "cpu",
) -> Path:
    """Write a loadable random Qwen2.5-VL (bf16 weights, tokenizer, processor, generation config) to ``out_dir``.

    ``shape`` (e.g. ``SHAPES["3b"]``) builds a stand-in of a real size; ``device="cuda"`` draws its random
    weights on the GPU, which takes seconds where a CPU takes minutes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The tokenizer ignores ``seed`` so token ids stay the same whichever weights a test draws.
    tokenizer = train_tokenizer(vocab_corpus if vocab_corpus is not None else default_corpus())
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, shape=shape)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(torch.bfloat16)
    built = time.perf_counter() - started
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info(
        "wrote random Qwen2.5-VL (%d tokens, %d params; drawn in %.1f s, saved in %.1f s) to %s",
        len(tokenizer), model.num_parameters(), built, time.perf_counter() - started - built, out,
    )  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m sparse_video_r1.synthetic.tiny_model OUT_DIR [--shape tiny|3b|7b] [--seed N] [--device D]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="tiny, or a real Qwen2.5-VL size")
    parser.add_argument("--device", default="cpu", help="where to draw the random weights (cuda: seconds for 7B)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_tiny_qwen2_5_vl(args.out_dir, seed=args.seed, shape=SHAPES[args.shape], device=args.device)


if __name__ == "__main__":
    main()
