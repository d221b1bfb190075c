"""Real test videos whose frames say which frame they are.

Tests, the demo and the GPU smoke scripts need to prove that "the frame at t seconds" really is frame
``floor(t * fps)`` after H.264 compression, seeking and resizing. Each frame therefore paints its own index
as a grid of large black/white blocks (one bit per block, most significant bit top-left) that covers the
whole picture, so the bits survive lossy coding and any later resize: :func:`read_frame_index` only
samples the middle of each block, in coordinates relative to the image size.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: The index is drawn as a GRID_ROWS x GRID_COLS grid of bits, so at most 2**16 frames.
GRID_ROWS = 4
GRID_COLS = 4
MAX_FRAMES = 2 ** (GRID_ROWS * GRID_COLS)

#: Only the central part of each block is read, away from edges that coding and resizing blur.
_SAMPLE_FRACTION = 0.5
#: A block whose mean grey level lands in this band is neither black nor white: not an index frame.
_AMBIGUOUS_BAND = (64.0, 192.0)


def _validate(fps: float, width: int, height: int, keyframe_interval: int | None) -> None:
    if not fps > 0 or not np.isfinite(fps):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    for name, side in (("width", width), ("height", height)):
        if side < 16 or side % 2:
            raise ValueError(f"{name} must be even and >= 16 (yuv420p needs even sides), got {side}")
    if keyframe_interval is not None and keyframe_interval < 1:
        raise ValueError(f"keyframe_interval must be >= 1 or None, got {keyframe_interval}")


def index_image(index: int, *, width: int, height: int) -> np.ndarray:
    """The HxWx3 uint8 picture of ``index``: block (r, c) is white where bit ``r*GRID_COLS + c`` (MSB first) is 1."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"index must be in [0, {MAX_FRAMES}), got {index}")
    nbits = GRID_ROWS * GRID_COLS
    bits = np.array([(index >> (nbits - 1 - k)) & 1 for k in range(nbits)], dtype=np.uint8).reshape(
        GRID_ROWS, GRID_COLS
    )
    rows = np.arange(height) * GRID_ROWS // height
    cols = np.arange(width) * GRID_COLS // width
    grey = bits[rows[:, None], cols[None, :]] * np.uint8(255)
    return np.repeat(grey[:, :, None], 3, axis=2)


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    fps: float,
    width: int,
    height: int,
    keyframe_interval: int | None = None,
) -> pathlib.Path:
    """Write HxWx3 uint8 RGB ``frames`` as an H.264 (yuv420p) mp4 at a constant ``fps``; returns its path.

    Frame ``i`` gets pts ``i``, so it is shown from ``i / fps`` seconds: exactly the frame that
    :func:`sparse_video_r1.env.frames.frame_index` maps those timestamps to. ``keyframe_interval`` fixes the
    GOP length (and turns off x264's scene-cut keyframes, which would otherwise add extra ones) so seeking
    across GOP boundaries can be tested; None keeps the encoder default.
    """
    _validate(fps, width, height, keyframe_interval)
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(100_000)
    count = 0
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
            stream.options = {"x264-params": f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"}
        for pixels in frames:
            if pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
                raise ValueError(f"frame {count} is {pixels.dtype} {pixels.shape}; expected uint8 {(height, width, 3)}")
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = count
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    if count == 0:
        out.unlink()
        raise ValueError(f"{out}: no frames to write")
    logger.debug("wrote %d-frame video %s at %s fps", count, out, rate)
    return out


def write_index_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int,
    fps: float = 30.0,
    width: int = 64,
    height: int = 48,
    keyframe_interval: int | None = None,
) -> pathlib.Path:
    """Write an H.264 mp4 whose frame ``i`` shows :func:`index_image` of ``i``; returns its path."""
    if num_frames < 1 or num_frames > MAX_FRAMES:
        raise ValueError(f"num_frames must be in [1, {MAX_FRAMES}], got {num_frames}")
    frames = (index_image(index, width=width, height=height) for index in range(num_frames))
    return write_video(path, frames, fps=fps, width=width, height=height, keyframe_interval=keyframe_interval)


def read_frame_index(image: Image.Image | np.ndarray) -> int:
    """Decode the index painted by :func:`index_image` from a frame of any size.

    Raises ValueError when a block is neither clearly black nor clearly white, i.e. the image is not an
    index frame (or was damaged beyond recognition), rather than returning a wrong number.
    """
    grey = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    if grey.ndim != 2 or grey.shape[0] < GRID_ROWS or grey.shape[1] < GRID_COLS:
        raise ValueError(f"expected an HxW or HxWx3 image of at least {GRID_ROWS}x{GRID_COLS}, got {grey.shape}")
    height, width = grey.shape
    index = 0
    for r in range(GRID_ROWS):
        for c in range(GRID_COLS):
            level = _block_centre_mean(grey, r, c, height, width)
            if _AMBIGUOUS_BAND[0] < level < _AMBIGUOUS_BAND[1]:
                raise ValueError(f"block ({r}, {c}) has grey level {level:.0f}: not an index frame")
            index = (index << 1) | int(level >= _AMBIGUOUS_BAND[1])
    return index


def _block_centre_mean(grey: np.ndarray, row: int, col: int, height: int, width: int) -> float:
    """Mean level of the central ``_SAMPLE_FRACTION`` of block (row, col); at least one pixel."""
    margin = (1 - _SAMPLE_FRACTION) / 2
    top = int((row + margin) * height / GRID_ROWS)
    bottom = max(top + 1, int((row + 1 - margin) * height / GRID_ROWS))
    left = int((col + margin) * width / GRID_COLS)
    right = max(left + 1, int((col + 1 - margin) * width / GRID_COLS))
    return float(grey[top:bottom, left:right].mean())
