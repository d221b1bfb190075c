"""Every knob of the frame-request dialogue and its reward, each declared once, in sections by consumer.

:class:`SparseVideoConfig` (the trainer's hydra key ``sparse_video``) holds three sections:

* ``dialogue`` (:class:`DialogueRules`): what the model may see and say, read by
  :class:`~sparse_video_r1.env.dialogue.Episode`;
* ``decoding`` (:class:`DecodingConfig`): how frames are decoded and sized, read by the frame sampler and its
  shared decode pool (:func:`~sparse_video_r1.env.frames.shared_decoder`, keyed on this section alone);
* ``training`` (:class:`TrainingConfig`): how the agent loop marks the dialogue for the loss.

Training, evaluation and the demo read the same dataclasses, so a result can always be reported next to the
exact settings that produced it. Each field carries its help text (``metadata["help"]``), from which
:func:`add_config_arguments` makes command-line flags; each section validates itself once, on construction.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Qwen2.5-VL merges 2x2 patches of 14 px, so image sides are multiples of 28.
IMAGE_FACTOR = 28


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DialogueRules:
    """Limits of one adaptive-frame dialogue.

    ``max_total_frames`` bounds GPU memory and vLLM's ``limit_mm_per_prompt`` (size it with
    :meth:`max_images_per_prompt`).
    """

    initial_frames: int = _help(4, "uniform frames shown with the question")
    max_frames_per_request: int = _help(4, "frames one <frames> request may ask for")
    max_total_frames: int = _help(16, "frames of a whole dialogue (initial ones included)")
    max_turns: int = _help(4, "assistant turns of a dialogue (1: answer from the initial frames)")
    max_tokens_per_turn: int = _help(512, "tokens one assistant turn may generate")

    def __post_init__(self) -> None:
        if self.initial_frames < 1:
            raise ValueError(f"initial_frames must be >= 1, got {self.initial_frames}")
        if self.max_total_frames < self.initial_frames:
            raise ValueError(f"max_total_frames ({self.max_total_frames}) < initial_frames ({self.initial_frames})")
        if self.max_frames_per_request < 0 or self.max_turns < 1:
            raise ValueError("max_frames_per_request must be >= 0 and max_turns >= 1")

    @property
    def allows_requests(self) -> bool:
        """False for the uniform-frame baseline: one turn, answer from the initial frames."""
        return self.max_turns > 1 and self.max_frames_per_request > 0 and self.max_total_frames > self.initial_frames

    def uniform_baseline(self, frames: int) -> DialogueRules:
        """These rules as the single-turn ``uniform_N`` baseline: ``frames`` uniform frames, answer at once."""
        return dataclasses.replace(self, **uniform_baseline_fields(frames))

    def max_images_per_prompt(self) -> int:
        """The value for vLLM's ``limit_mm_per_prompt`` / verl's ``rollout.limit_images``."""
        return self.max_total_frames


def check_decoding(*, min_pixels: int, max_pixels: int, max_open_videos: int, decode_timeout_s: float) -> None:
    """The checks of every decoding setting the frame sampler takes (it runs them for direct callers too)."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    if max_open_videos < 1:
        raise ValueError(f"max_open_videos must be >= 1, got {max_open_videos}")
    if not decode_timeout_s > 0:
        raise ValueError(f"decode_timeout_s must be > 0, got {decode_timeout_s}")


@dataclass(frozen=True)
class DecodingConfig:
    """How frames are decoded and sized: the frame sampler's settings and its decode pool's."""

    min_pixels: int = _help(16 * IMAGE_FACTOR * IMAGE_FACTOR, "pixel floor of every frame (16 visual tokens)")
    max_pixels: int = _help(
        128 * IMAGE_FACTOR * IMAGE_FACTOR,
        "pixel budget of every frame (128 visual tokens), so native-resolution video never reaches the vision tower",
    )
    decode_timeout_s: float = _help(30.0, "seconds an open or decode may take before the sample fails")
    max_open_videos: int = _help(16, "video readers kept open per process (least recently used closed first)")
    decode_workers: int = _help(8, "threads of the per-process decode pool")
    frame_cache_mb: int = _help(
        256,
        "decoded frames kept per process (MB), shared by all its dialogues: the rollouts of one GRPO group read "
        "the same video, so most of their frames are decoded once; 0 turns it off",
    )

    def __post_init__(self) -> None:
        check_decoding(
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            max_open_videos=self.max_open_videos,
            decode_timeout_s=self.decode_timeout_s,
        )
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.frame_cache_mb < 0:
            raise ValueError(f"frame_cache_mb must be >= 0, got {self.frame_cache_mb}")

    @property
    def max_visual_tokens_per_frame(self) -> int:
        return self.max_pixels // (IMAGE_FACTOR * IMAGE_FACTOR)


@dataclass(frozen=True)
class TrainingConfig:
    """How the agent loop prepares a dialogue for the policy loss."""

    loss_on: str = _help(
        "all_turns",
        "all_turns: every assistant turn gets the policy gradient; last_turn: only the final one does (the seed's "
        "scheme, kept as an ablation: frame-request turns are then never learned)",
    )

    def __post_init__(self) -> None:
        if self.loss_on not in ("all_turns", "last_turn"):
            raise ValueError(f"loss_on must be 'all_turns' or 'last_turn', got {self.loss_on!r}")


@dataclass(frozen=True)
class SparseVideoConfig:
    """The hydra key ``sparse_video``: one section per consumer (see the module docstring)."""

    dialogue: DialogueRules = field(default_factory=DialogueRules)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SparseVideoConfig:
        """Build from nested mappings (hydra/OmegaConf or JSON); unknown sections or keys are rejected by name."""
        values = dict(values or {})
        sections = {spec.name: spec.type for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise ValueError(f"unknown sparse_video sections {unknown}; known sections: {sorted(sections)}")
        types = {"dialogue": DialogueRules, "decoding": DecodingConfig, "training": TrainingConfig}
        return cls(**{name: from_mapping(types[name], section) for name, section in values.items()})

    def with_dialogue(self, rules: DialogueRules) -> SparseVideoConfig:
        return dataclasses.replace(self, dialogue=rules)

    def hydra_overrides(self, prefix: str = "sparse_video") -> list[str]:
        """Every field as a hydra override, ``{prefix}.{section}.{field}={value}``."""
        return [
            f"{prefix}.{section}.{key}={value}"
            for section, values in dataclasses.asdict(self).items()
            for key, value in values.items()
        ]


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms: ``score = accuracy_weight*acc + format_weight*fmt - frame_cost*frames``."""

    accuracy_weight: float = 1.0
    format_weight: float = 0.1
    frame_cost: float = 0.0
    #: The score of a sample the environment failed (``video_error``, ``decode_timeout``, ``error``). Such a
    #: sample gets no gradient, so this only moves the mean of its GRPO group: set it near the group's
    #: typical score to keep one broken video from raising its siblings' advantages.
    failure_score: float = 0.0


def uniform_baseline_fields(frames: int) -> dict[str, int]:
    """The DialogueRules fields that make the ``uniform_N`` baseline, as SFT traces store them (JSON)."""
    return {"initial_frames": frames, "max_total_frames": frames, "max_turns": 1}


def from_mapping(cls: type[_T], values: Mapping[str, Any] | None) -> _T:
    """Build a config dataclass from a (hydra/OmegaConf) mapping, rejecting unknown keys by name."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------------
# Command-line flags from the fields


def documented_fields(cls: type) -> list[str]:
    """The fields of ``cls`` that carry a help text: the ones :func:`add_config_arguments` makes flags of."""
    return [spec.name for spec in dataclasses.fields(cls) if "help" in spec.metadata]


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, skip: Sequence[str] = ()
) -> None:
    """One ``--flag`` per documented field of ``cls``: the dataclass stays the one declaration of each setting."""
    for spec in dataclasses.fields(cls):
        if spec.name in skip or "help" not in spec.metadata:
            continue
        flag = "--" + spec.name.replace("_", "-")
        given: dict[str, Any] = {"help": spec.metadata["help"]}
        if spec.default is dataclasses.MISSING:
            given["required"] = True
        else:
            given["default"] = spec.default
        if spec.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **given)
            continue
        kind = {"int": int, "float": float}.get(str(spec.type).split(" ")[0], str)
        parser.add_argument(flag, type=kind, choices=spec.metadata.get("choices"), **given)


def config_from_args(cls: type[_T], args: argparse.Namespace, skip: Sequence[str] = (), **given: Any) -> _T:
    """``cls`` from the flags :func:`add_config_arguments` added (plus ``given`` for the skipped fields)."""
    return cls(**given, **{name: getattr(args, name) for name in documented_fields(cls) if name not in skip})


def config_flags(config: Any) -> list[str]:
    """``config``'s documented fields as the flags :func:`add_config_arguments` reads back."""
    return [
        item
        for name in documented_fields(type(config))
        for item in ("--" + name.replace("_", "-"), str(getattr(config, name)))
    ]


#: The ``agent_name`` that preprocessed rows carry and ``configs/agent_loops.yaml`` registers.
AGENT_NAME = "sparse_video_agent"
