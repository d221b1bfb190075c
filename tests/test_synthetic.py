"""The index videos really are H.264 mp4s whose every frame, after coding and resizing, reads back as its index."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sparse_video_r1.synthetic.videos import MAX_FRAMES, index_image, read_frame_index, write_index_video


def decode_all(path: Path) -> tuple[list[np.ndarray], list[bool], av.video.stream.VideoStream]:
    """Every frame (RGB) and whether it is a keyframe, decoded with PyAV rather than decord."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return [f.to_ndarray(format="rgb24") for f in frames], [f.key_frame for f in frames], stream


@pytest.mark.parametrize("index", [0, 1, 2, 255, 256, 1000, 4095, 54321, MAX_FRAMES - 1])
@pytest.mark.parametrize("size", [(64, 48), (28, 28), (112, 84), (320, 240), (500, 56)])
def test_index_image_survives_bicubic_resize(index: int, size: tuple[int, int]) -> None:
    image = Image.fromarray(index_image(index, width=64, height=48)).resize(size, Image.Resampling.BICUBIC)
    assert read_frame_index(image) == index
    assert read_frame_index(np.asarray(image)) == index


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, MAX_FRAMES - 1),
    width=st.integers(8, 200).map(lambda w: 2 * w),
    height=st.integers(8, 200).map(lambda h: 2 * h),
    out_w=st.integers(16, 400),
    out_h=st.integers(16, 400),
)
def test_index_image_round_trips_any_size(index: int, width: int, height: int, out_w: int, out_h: int) -> None:
    pixels = index_image(index, width=width, height=height)
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
    resized = Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.BICUBIC)
    assert read_frame_index(resized) == index


def test_read_frame_index_accepts_greyscale_and_rejects_non_index_images() -> None:
    assert read_frame_index(index_image(77, width=64, height=48)[:, :, 0]) == 77
    with pytest.raises(ValueError, match="not an index frame"):
        read_frame_index(Image.new("RGB", (64, 48), (128, 128, 128)))
    with pytest.raises(ValueError, match="at least"):
        read_frame_index(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="index must be"):
        index_image(MAX_FRAMES, width=64, height=48)


@pytest.mark.parametrize(
    ("num_frames", "fps", "width", "height"),
    [(40, 30.0, 64, 48), (25, 25.0, 96, 64), (12, 30000 / 1001, 16, 16), (1, 1.0, 64, 48)],
)
def test_written_video_is_h264_with_self_describing_frames(
    tmp_path: Path, num_frames: int, fps: float, width: int, height: int
) -> None:
    path = write_index_video(tmp_path / "a" / "b" / "v.mp4", num_frames=num_frames, fps=fps, width=width, height=height)
    assert path == tmp_path / "a" / "b" / "v.mp4" and path.stat().st_size > 0
    frames, keyframes, stream = decode_all(path)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.codec_context.width, stream.codec_context.height) == (width, height)
    assert stream.average_rate == Fraction(fps).limit_denominator(100_000)
    assert keyframes[0]
    assert [read_frame_index(frame) for frame in frames] == list(range(num_frames))


@pytest.mark.parametrize("interval", [1, 5, 16])
def test_keyframe_interval_fixes_the_gop(tmp_path: Path, interval: int) -> None:
    path = write_index_video(tmp_path / "gop.mp4", num_frames=50, keyframe_interval=interval)
    frames, keyframes, _ = decode_all(path)
    assert [i for i, key in enumerate(keyframes) if key] == list(range(0, 50, interval))
    assert [read_frame_index(frame) for frame in frames] == list(range(50))


def test_default_gop_has_few_keyframes(tmp_path: Path) -> None:
    _, keyframes, _ = decode_all(write_index_video(tmp_path / "default.mp4", num_frames=50))
    assert keyframes[0] and sum(keyframes) < 25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": MAX_FRAMES + 1}, "num_frames"),
        ({"num_frames": 5, "fps": 0.0}, "fps"),
        ({"num_frames": 5, "fps": -30.0}, "fps"),
        ({"num_frames": 5, "fps": float("nan")}, "fps"),
        ({"num_frames": 5, "width": 63}, "width"),
        ({"num_frames": 5, "width": 14}, "width"),
        ({"num_frames": 5, "height": 15}, "height"),
        ({"num_frames": 5, "keyframe_interval": 0}, "keyframe_interval"),
    ],
)
def test_invalid_arguments_are_rejected_before_writing(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=message):
        write_index_video(path, **kwargs)
    assert not path.exists()
