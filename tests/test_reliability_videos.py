"""Every kind of bad video, through the frame sampler and through the agent loop in one batch.

Each file either gives the right frames (checked by the index painted on every frame) or a named
:class:`~sparse_video_r1.env.frames.VideoError`; in the agent loop a failure becomes that sample's recorded stop
reason with a zero reward and no gradient, while the other samples of the batch complete. The outcomes are
tabled in ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from test_agent_loop import FPS, REQUEST, make_loop, row, run_loop
from test_reward import verl_extra_info
from verl.utils.tokenizer import hf_processor, hf_tokenizer
from video_corpus import encode_video

from sparse_video_r1.env.config import IMAGE_FACTOR
from sparse_video_r1.env.dialogue import StopReason
from sparse_video_r1.env.frames import (
    DecodeFailedError,
    FrameSampler,
    VideoError,
    VideoNotFoundError,
    VideoUnreadableError,
)
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.synthetic.videos import index_image, read_frame_index, write_index_video
from sparse_video_r1.tools.eval_report import summarize
from sparse_video_r1.tools.evaluate import RunClock, make_record
from sparse_video_r1.training.reward import compute_score
from sparse_video_r1.training.standalone import to_training_batch

MIN_PIXELS = 16 * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = 64 * IMAGE_FACTOR * IMAGE_FACTOR
#: Presentation times (ms) of the variable-frame-rate video: 10 fps, then 1 fps, then 30 fps.
VFR_PTS_MS = [0, 100, 200, 300, 400, 500, 1500, 2500, 3500, 4500, 5500, *range(5533, 5533 + 9 * 33, 33)]
#: Packets of the out-of-order video are muxed in this presentation order (a malformed but muxable file).
SHUFFLED_ORDER = [0, 1, 2, 5, 3, 4, 6, 7, 9, 8]
#: Packets 1 and 2, and 5 and 6, claim the same presentation slot (a broken mux).
DUPLICATED_ORDER = [0, 1, 1, 2, 3, 4, 4, 5]
#: The GOP of frames 30..39 is zeroed in ``corrupted_gop``; 15 and 45 (the initial frames) still decode.
ZEROED_FRAMES = range(30, 40)


def write_video(
    path: Path, *, pts_ms: Sequence[int], width: int = 64, height: int = 48, rotation: int | None = None
) -> Path:
    """An H.264 mp4 whose frame ``i`` paints index ``i`` and is shown at ``pts_ms[i]`` milliseconds."""
    return encode_video(
        path, pts_ms, time_base=Fraction(1, 1000), width=width, height=height, rate=10, rotation=rotation
    )


def write_out_of_order(path: Path, order: Sequence[int]) -> Path:
    """Intra-only H.264 whose packet ``i`` (painting ``i``) claims presentation slot ``order[i]``."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"x264-params": "bframes=0"}
        packets = []
        for index in range(len(order)):
            frame = av.VideoFrame.from_ndarray(index_image(index, width=64, height=48), format="rgb24")
            frame.pts = index
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for index, packet in enumerate(packets):
            packet.dts, packet.pts = index, order[index] + 2  # pts >= dts, as the muxer requires
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """A valid mp4 with one AAC track and no video at all."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def zero_frames(source: Path, path: Path, frames: range) -> Path:
    """A copy of ``source`` whose coded frames ``frames`` (in presentation order) are all zero bytes."""
    with av.open(str(source)) as container:
        packets = sorted((packet.pts, packet.pos, packet.size) for packet in container.demux(video=0) if packet.size)
    data = bytearray(source.read_bytes())
    for shown, (_, pos, size) in enumerate(packets):
        if shown in frames:
            data[pos : pos + size] = bytes(size)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability_videos")
    good = write_index_video(root / "good.mp4", num_frames=60, fps=FPS, keyframe_interval=10)
    (root / "zero_bytes.mp4").touch()
    (root / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "text.mp4").write_text("this is not a video\n")
    Image.fromarray(index_image(3, width=64, height=48)).save(root / "png_as.mp4", format="PNG")
    (root / "random_bytes.mp4").write_bytes(random.Random(0).randbytes(4096))
    return {
        "good": good,
        "missing": root / "missing.mp4",
        "zero_bytes": root / "zero_bytes.mp4",
        "truncated": root / "truncated.mp4",
        "text": root / "text.mp4",
        "png": root / "png_as.mp4",
        "random_bytes": root / "random_bytes.mp4",
        "audio_only": write_audio_only(root / "audio_only.mp4"),
        "corrupted_gop": zero_frames(good, root / "corrupted_gop.mp4", ZEROED_FRAMES),
        "narrow": write_index_video(root / "narrow.mp4", num_frames=10, fps=FPS, width=48, height=48),
        "extreme_aspect": write_index_video(root / "extreme_aspect.mp4", num_frames=3, fps=FPS, width=6400, height=30),
        "rotated": write_video(root / "rotated.mp4", pts_ms=range(0, 2000, 100), width=96, height=64, rotation=90),
        "vfr": write_video(root / "vfr.mp4", pts_ms=VFR_PTS_MS),
        "out_of_order": write_out_of_order(root / "out_of_order.mp4", SHUFFLED_ORDER),
        "duplicate_pts": write_out_of_order(root / "duplicate_pts.mp4", DUPLICATED_ORDER),
        "single_frame": write_index_video(root / "single_frame.mp4", num_frames=1, fps=FPS),
        "two_hours": write_index_video(root / "two_hours.mp4", num_frames=7200, fps=1.0),
    }


@pytest.fixture(scope="module")
def sampler() -> Iterator[FrameSampler]:
    shared = FrameSampler(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    yield shared
    shared.close()


def painted(frames: list) -> list[int]:
    return [read_frame_index(frame.image) for frame in frames]


# ---------------------------------------------------------------------------------------------------
# The sampler


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        ("missing", VideoNotFoundError, "missing"),
        ("zero_bytes", VideoUnreadableError, "unreadable"),
        ("truncated", VideoUnreadableError, "unreadable"),  # the moov index (written last) is gone
        ("text", VideoUnreadableError, "unreadable"),
        ("png", VideoUnreadableError, "unreadable"),
        ("random_bytes", VideoUnreadableError, "unreadable"),
        ("audio_only", VideoUnreadableError, "unreadable"),
        ("png", VideoUnreadableError, "unreadable"),  # FFmpeg would read it as one frame; the sampler refuses stills
        ("extreme_aspect", VideoUnreadableError, "unreadable"),  # 213:1, past the Qwen processor's 200:1 limit
    ],
)
def test_unusable_videos_raise_a_named_error(
    sampler: FrameSampler, videos: dict[str, Path], name: str, error: type[VideoError], reason: str
) -> None:
    path = videos[name]
    with pytest.raises(error) as caught:
        sampler.fetch(path, [0.0, 0.55])
    assert caught.value.reason == reason and caught.value.path == str(path)
    assert str(path) not in sampler.open_paths


def test_a_video_narrower_than_a_patch_serves_the_right_frames(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    """48 px wide (decord 0.6 failed to copy frames under 64 px): scaled up to the pixel budget, true frames."""
    info = sampler.info(videos["narrow"])
    frames = sampler.fetch(videos["narrow"], [i / info.fps for i in range(info.num_frames)])
    assert painted(frames) == list(range(10))
    assert all(MIN_PIXELS <= frame.image.width * frame.image.height <= MAX_PIXELS for frame in frames)


def test_a_corrupted_gop_fails_only_the_frames_that_need_it(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    path = videos["corrupted_gop"]
    assert painted(sampler.fetch(path, [1.5, 4.5])) == [15, 45]
    with pytest.raises(DecodeFailedError) as caught:
        sampler.fetch(path, [3.55])
    assert caught.value.reason == "decode_failed"
    assert painted(sampler.fetch(path, [5.9])) == [59]  # the next call reopens the file


def test_a_single_frame_video_serves_that_frame_for_any_time(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    info = sampler.info(videos["single_frame"])
    assert (info.num_frames, info.duration) == (1, pytest.approx(1 / FPS))
    frames = sampler.fetch(videos["single_frame"], [0.0, 0.05, 0.1, 7.0, -1.0, 1e308])
    assert [(frame.index, frame.timestamp) for frame in frames] == [(0, 0.0)] and painted(frames) == [0]


def test_a_two_hour_video_serves_frames_from_anywhere(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    info = sampler.info(videos["two_hours"])
    assert (info.num_frames, info.duration) == (7200, 7200.0)
    frames = sampler.fetch(videos["two_hours"], [0.0, 3599.5, 3600.0, 7199.9, 1e9])
    assert [frame.index for frame in frames] == painted(frames) == [0, 3599, 3600, 7199]


def test_a_rotated_video_comes_back_upright_as_players_show_it(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    """The sampler applies the display matrix: rotation 90 turns the 96x64 picture counter-clockwise."""
    (frame,) = sampler.fetch(videos["rotated"], [0.55])
    assert frame.index == 5 and frame.image.width < frame.image.height  # portrait, as displayed
    assert read_frame_index(np.rot90(np.asarray(frame.image), k=-1)) == 5


def test_variable_frame_rate_frames_decode_in_order(sampler: FrameSampler, videos: dict[str, Path]) -> None:
    """What holds today: each index is the right picture; see the xfail below for the time mapping."""
    info = sampler.info(videos["vfr"])
    assert info.num_frames == len(VFR_PTS_MS)
    frames = sampler.fetch(videos["vfr"], [i * info.duration / 40 for i in range(40)])
    assert [frame.index for frame in frames] == painted(frames)


def test_variable_frame_rate_returns_the_frame_shown_at_each_time(
    sampler: FrameSampler, videos: dict[str, Path]
) -> None:
    starts = [pts / 1000 for pts in VFR_PTS_MS]
    for t in (0.25, 1.0, 3.0, 5.0, 5.55, 5.7):
        shown = max(i for i, start in enumerate(starts) if start <= t)
        (frame,) = sampler.fetch(videos["vfr"], [t])
        assert read_frame_index(frame.image) == shown, f"t={t}"
        assert frame.timestamp == pytest.approx(starts[shown], abs=1e-3), f"t={t}"


def test_out_of_order_timestamps_serve_real_frames_without_error(
    sampler: FrameSampler, videos: dict[str, Path]
) -> None:
    """A malformed file whose pts go backwards in decoding order: every index gets a real picture of the file."""
    info = sampler.info(videos["out_of_order"])
    assert info.num_frames == len(SHUFFLED_ORDER)
    frames = sampler.fetch(videos["out_of_order"], [i / info.fps for i in range(info.num_frames)])
    assert [frame.index for frame in frames] == list(range(info.num_frames))
    assert set(painted(frames)) <= set(range(info.num_frames))


def test_out_of_order_timestamps_serve_frames_in_presentation_order(
    sampler: FrameSampler, videos: dict[str, Path]
) -> None:
    info = sampler.info(videos["out_of_order"])
    frames = sampler.fetch(videos["out_of_order"], [i / info.fps for i in range(info.num_frames)])
    shown = sorted(range(len(SHUFFLED_ORDER)), key=SHUFFLED_ORDER.__getitem__)  # painted index in each slot
    assert painted(frames) == shown


def test_a_pts_muxed_twice_is_one_frame_showing_the_first_packet(
    sampler: FrameSampler, videos: dict[str, Path]
) -> None:
    info = sampler.info(videos["duplicate_pts"])
    assert info.num_frames == len(set(DUPLICATED_ORDER))
    frames = sampler.fetch(videos["duplicate_pts"], [info.frame_time(i) for i in range(info.num_frames)])
    assert painted(frames) == [DUPLICATED_ORDER.index(slot) for slot in sorted(set(DUPLICATED_ORDER))]


# ---------------------------------------------------------------------------------------------------
# The agent loop: all of them in one batch

#: name -> (stop reason, failure reason); every good file's dialogue is [REQUEST, ANSWER].
IN_A_BATCH: dict[str, tuple[str, str | None]] = {
    "good": ("answered", None),
    "single_frame": ("answered", None),
    "two_hours": ("answered", None),
    "rotated": ("answered", None),
    "vfr": ("answered", None),
    "out_of_order": ("answered", None),
    "narrow": ("answered", None),
    "missing": ("video_error", "missing"),
    "zero_bytes": ("video_error", "unreadable"),
    "truncated": ("video_error", "unreadable"),
    "text": ("video_error", "unreadable"),
    "audio_only": ("video_error", "unreadable"),
    "png": ("video_error", "unreadable"),
    "extreme_aspect": ("video_error", "unreadable"),
    "corrupted_gop": ("video_error", "decode_failed"),  # at the request for 3.55 s, after one model turn
}


@pytest.fixture(scope="module")
def tokenizer_and_processor(tiny_model_dir: Path):
    return hf_tokenizer(str(tiny_model_dir)), hf_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path, tokenizer_and_processor, videos: dict[str, Path]):
    tokenizer, _ = tokenizer_and_processor
    server = ScriptedServer(tokenizer, [REQUEST, "<answer>C</answer>"])
    loop = make_loop(tiny_model_dir, tokenizer_and_processor, server)
    rows = [row(videos[name], name) for name in IN_A_BATCH]
    return rows, run_loop(loop, rows)


def test_one_batch_of_every_video_completes_with_each_outcome_recorded(batch) -> None:
    _, outputs = batch
    for name, output in zip(IN_A_BATCH, outputs, strict=True):
        fields = output.extra_fields
        stop, failure = IN_A_BATCH[name]
        assert (fields["stop_reason"], fields["failure_reason"]) == (stop, failure), name
        if stop == "answered":
            assert fields["assistant_turns"] == 2, name
            assert fields["frames_used"] == len(output.multi_modal_data["images"]) >= 1, name
        else:
            assert fields["predicted_answer"] is None and sum(output.response_mask) == 0, name
            assert StopReason(stop) is not StopReason.ANSWERED
    assert outputs[list(IN_A_BATCH).index("corrupted_gop")].extra_fields["assistant_turns"] == 1


def test_evaluation_records_keep_the_failure_reason(batch) -> None:
    """An evaluation record says why a video failed (``decode_failed``, ``unreadable``...), not just ``video_error``."""
    _, outputs = batch
    clock = RunClock()
    for name, output in zip(IN_A_BATCH, outputs, strict=True):
        question = {"qid": name, "question_type": "CW", "answer": 2}
        record = make_record(question, output, image_token_id=-1, seconds=0.0, run=clock)
        assert (record["stop_reason"], record["failure_reason"]) == IN_A_BATCH[name], name
    failures = summarize(
        [
            make_record({"qid": n, "question_type": "CW", "answer": 2}, o, image_token_id=-1, seconds=0.0, run=clock)
            for n, o in zip(IN_A_BATCH, outputs, strict=True)
        ]
    )["failure_reasons"]
    assert failures == {"decode_failed": 1, "missing": 1, "unreadable": 6}


def test_failed_samples_score_zero_accuracy_and_zero_format(batch) -> None:
    rows, outputs = batch
    for sample, output in zip(rows, outputs, strict=True):
        extra_info = verl_extra_info(sample["extra_info"], output.extra_fields, output.num_turns)
        score = compute_score("nextqa", "", "C", extra_info)
        ok = output.extra_fields["stop_reason"] == "answered"
        assert (score["accuracy"], score["format"]) == (float(ok), float(ok)), sample["extra_info"]["qid"]


def test_the_mixed_batch_passes_verls_postprocessing(batch, tokenizer_and_processor) -> None:
    _, outputs = batch
    tokenizer, processor = tokenizer_and_processor
    _, data = to_training_batch(outputs, tokenizer, processor, 1024, 1024)
    assert data.batch["input_ids"].shape == (len(IN_A_BATCH), 2048)
    assert list(data.non_tensor_batch["stop_reason"]) == [output.extra_fields["stop_reason"] for output in outputs]
