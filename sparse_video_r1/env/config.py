"""Every knob of the frame-request dialogue and its reward, in one place.

The same dataclasses configure training (read from the hydra key ``sparse_video``), evaluation and
the demo, so a result can always be reported next to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Qwen2.5-VL merges 2x2 patches of 14 px, so image sides are multiples of 28.
IMAGE_FACTOR = 28


@dataclass(frozen=True)
class DialogueConfig:
    """Limits of one adaptive-frame dialogue.

    ``max_frames_per_request`` and ``max_total_frames`` bound GPU memory and vLLM's
    ``limit_mm_per_prompt`` (size it with :meth:`max_images_per_prompt`); ``max_pixels`` caps every
    frame so native-resolution video never reaches the vision tower.
    """

    initial_frames: int = 4
    max_frames_per_request: int = 4
    max_total_frames: int = 16
    max_turns: int = 4
    min_pixels: int = 16 * IMAGE_FACTOR * IMAGE_FACTOR
    max_pixels: int = 128 * IMAGE_FACTOR * IMAGE_FACTOR
    max_tokens_per_turn: int = 512
    decode_timeout_s: float = 30.0
    max_open_videos: int = 16
    decode_workers: int = 8
    #: Decoded frames kept per worker process (MB), shared by all its dialogues: the rollouts of one GRPO
    #: group read the same video, so most of their frames are decoded once. 0 turns it off.
    frame_cache_mb: int = 256
    #: ``"all_turns"``: every assistant turn gets the policy gradient. ``"last_turn"``: only the final one
    #: does (the seed's scheme, kept as an ablation: frame-request turns are then never learned).
    loss_on: str = "all_turns"

    def __post_init__(self) -> None:
        if self.initial_frames < 1:
            raise ValueError(f"initial_frames must be >= 1, got {self.initial_frames}")
        if self.max_total_frames < self.initial_frames:
            raise ValueError(f"max_total_frames ({self.max_total_frames}) < initial_frames ({self.initial_frames})")
        if self.max_frames_per_request < 0 or self.max_turns < 1:
            raise ValueError("max_frames_per_request must be >= 0 and max_turns >= 1")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.loss_on not in ("all_turns", "last_turn"):
            raise ValueError(f"loss_on must be 'all_turns' or 'last_turn', got {self.loss_on!r}")
        if self.decode_timeout_s <= 0:
            raise ValueError(f"decode_timeout_s must be > 0, got {self.decode_timeout_s}")
        if self.frame_cache_mb < 0:
            raise ValueError(f"frame_cache_mb must be >= 0, got {self.frame_cache_mb}")

    @property
    def allows_requests(self) -> bool:
        """False for the uniform-frame baseline: one turn, answer from the initial frames."""
        return self.max_turns > 1 and self.max_frames_per_request > 0 and self.max_total_frames > self.initial_frames

    def uniform_baseline(self, frames: int) -> DialogueConfig:
        """This dialogue as the single-turn ``uniform_N`` baseline: ``frames`` uniform frames, answer at once."""
        return dataclasses.replace(self, **uniform_baseline_fields(frames))

    def max_images_per_prompt(self) -> int:
        """The value for vLLM's ``limit_mm_per_prompt`` / verl's ``rollout.limit_images``."""
        return self.max_total_frames


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
    """The DialogueConfig fields that make the ``uniform_N`` baseline, as SFT traces store them (JSON)."""
    return {"initial_frames": frames, "max_total_frames": frames, "max_turns": 1}


def from_mapping(cls: type[_T], values: Mapping[str, Any] | None) -> _T:
    """Build a config dataclass from a (hydra/OmegaConf) mapping, rejecting unknown keys by name."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return cls(**values)


#: The ``agent_name`` that preprocessed rows carry and ``configs/agent_loops.yaml`` registers.
AGENT_NAME = "sparse_video_agent"
