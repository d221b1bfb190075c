"""The sparse_video settings: sections by consumer, validated once, flags made from the fields."""

from __future__ import annotations

import argparse

import pytest

from sparse_video_r1.env import frames
from sparse_video_r1.env.config import (
    DecodingConfig,
    DialogueRules,
    SparseVideoConfig,
    TrainingConfig,
    add_config_arguments,
    config_flags,
    config_from_args,
)


def test_every_field_has_a_help_text_and_round_trips_through_its_flags() -> None:
    config = SparseVideoConfig(DialogueRules(initial_frames=3, max_turns=2), DecodingConfig(max_pixels=50176))
    for section in (config.dialogue, config.decoding, config.training):
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, type(section))
        assert all(action.help for action in parser._actions[1:])
        assert config_from_args(type(section), parser.parse_args(config_flags(section))) == section


@pytest.mark.parametrize(
    ("cls", "values", "match"),
    [
        (DialogueRules, {"initial_frames": 0}, "initial_frames"),
        (DialogueRules, {"initial_frames": 8, "max_total_frames": 4}, "max_total_frames"),
        (DecodingConfig, {"min_pixels": 20, "max_pixels": 10}, "min_pixels"),
        (DecodingConfig, {"decode_workers": 0}, "decode_workers"),
        (DecodingConfig, {"max_open_videos": 0}, "max_open_videos"),
        (TrainingConfig, {"loss_on": "first_turn"}, "loss_on"),
    ],
)
def test_each_section_validates_itself(cls: type, values: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**values)


def test_hydra_overrides_name_every_field_by_section() -> None:
    overrides = SparseVideoConfig().hydra_overrides()
    assert "sparse_video.dialogue.max_turns=4" in overrides
    assert "sparse_video.training.loss_on=all_turns" in overrides
    assert len(overrides) == 12


def test_the_shared_decoder_is_keyed_on_decoding_alone_and_evicted_pools_are_shut_down(monkeypatch) -> None:
    monkeypatch.setattr(frames.sampler, "SHARED_DECODERS", 2)
    monkeypatch.setattr(frames.sampler, "_shared", type(frames.sampler._shared)())
    first = frames.shared_decoder(DecodingConfig())
    assert frames.shared_decoder(DecodingConfig()) is first
    frames.shared_decoder(DecodingConfig(frame_cache_mb=1))
    frames.shared_decoder(DecodingConfig(frame_cache_mb=2))
    assert frames.shared_decoder(DecodingConfig()) is not first
    with pytest.raises(RuntimeError):
        first[1].submit(print)
