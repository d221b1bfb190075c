"""The dialogue viewer: turns and frames taken from real agent-loop outputs, rendered as one self-contained page."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from verl.utils.tokenizer import hf_tokenizer

from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.tools import viewer
from sparse_video_r1.training.standalone import make_agent_loop, run_dialogues

DIALOGUE = SparseVideoConfig(DialogueRules(initial_frames=2, max_frames_per_request=2, max_total_frames=6, max_turns=3))
OPTIONS = ["a <b>bold</b> claim", "green", "blue"]
SCRIPT = [
    "<think>Start.</think><frames>1.0, 2.0</frames>",
    "<think>Later.</think><frames>5.0, 5.5</frames>",
    "<think>Enough.</think><answer>B</answer>",
]


@pytest.fixture(scope="module")
def views(tiny_model_dir: Path, make_video) -> list[viewer.DialogueView]:
    """Two three-turn dialogues over a 6 s video and one over a missing video."""
    server = ScriptedServer(hf_tokenizer(str(tiny_model_dir)), SCRIPT)
    loop = make_agent_loop(tiny_model_dir, server, DIALOGUE, prompt_length=1024, response_length=1024)
    video = make_video(num_frames=60, fps=10.0)
    questions = [
        {"qid": f"q{i}", "video_path": str(path), "question": "Which <colour>?", "options": OPTIONS, "answer": "B"}
        for i, path in enumerate([video, video, video.parent / "missing.mp4"])
    ]
    outputs = run_dialogues(loop, questions, {"temperature": 0.0})
    image_token_id = loop.processor.image_token_id
    return [
        viewer.dialogue_view(output, question, loop.tokenizer, image_token_id, method="adaptive")
        for output, question in zip(outputs, questions, strict=True)
    ]


def test_each_turn_carries_the_frames_it_showed(views):
    view = views[0]
    assert [turn.speaker for turn in view.turns] == ["environment", "model"] * 3
    assert [len(turn.frames) for turn in view.turns] == [2, 0, 2, 0, 2, 0]
    timestamps = [frame.timestamp for turn in view.turns for frame in turn.frames]
    assert timestamps == pytest.approx([1.5, 4.5, 1.0, 2.0, 5.0, 5.5])
    assert view.turns[1].text == SCRIPT[0] and view.turns[-1].text == SCRIPT[2]
    assert view.turns[2].text.startswith("Here are the frames you requested")  # no chat-template role names
    assert not view.turns[2].text.endswith("assistant")
    assert (view.predicted_answer, view.answer, view.stop_reason, view.video_duration) == ("B", "B", "answered", 6.0)
    assert viewer.DialogueView.from_json(json.loads(json.dumps(view.as_json()))) == view


def test_a_failed_video_shows_its_placeholder_without_a_timeline(views):
    failed = views[2]
    assert failed.stop_reason == "video_error"
    assert [len(turn.frames) for turn in failed.turns] == [1]
    assert failed.turns[0].frames[0].timestamp is None
    assert "no video" in viewer.render_dialogue(failed)


def test_page_has_one_block_per_dialogue_with_its_thumbnails_on_the_timeline(views, tmp_path):
    path = tmp_path / "dialogues.html"
    viewer.write_html(path, views)
    page = path.read_text()
    blocks = page.split('<section class="dialogue"')[1:]
    assert len(blocks) == 3
    assert [block.count("<img") for block in blocks] == [6, 6, 1]
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 13 and all(src.startswith("data:image/jpeg;base64,") for src in sources)
    thumb = Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) <= viewer.THUMB_SIDE
    # Each frame's stem stands at its moment of the 6 s video, its thumbnail centred above it.
    stems = [float(x) for x in re.findall(r'class="stem" style="left:([0-9.]+)%', blocks[0])]
    assert stems == pytest.approx([100 * t / 6 for t in (1.5, 4.5, 1.0, 2.0, 5.0, 5.5)], abs=0.01)
    lefts = [float(x) for x in re.findall(r'class="frame" style="left:([0-9.]+)%', blocks[0])]
    width = 100 * viewer.THUMB_PX / viewer.TIMELINE_PX
    assert [left + width / 2 for left in lefts] == pytest.approx(stems, abs=0.01)
    at_the_end = viewer._timeline([viewer.FrameView(6.0, "")], [], 6.0)
    assert f'class="frame" style="left:{100 - width:.2f}%' in at_the_end  # kept inside the timeline
    # The index links every dialogue with its model turns, frames and stop reason.
    assert re.findall(r'<a href="#([^"]+)">', page) == re.findall(r'<section class="dialogue" id="([^"]+)">', page)
    index = page.split('<table class="index">')[1].split("</table>")[0]
    assert "<td>3</td><td>6</td><td>answered</td>" in index and "<td>0</td><td>1</td><td>video_error</td>" in index
    assert "Which &lt;colour&gt;?" in page and "<b>bold</b>" not in page  # model and data text is escaped
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: the page works offline


@given(st.lists(st.floats(0.0, 1.0), max_size=20).map(sorted))
def test_thumbnails_sharing_a_lane_never_overlap(lefts):
    lanes = viewer._lanes(lefts)
    width = viewer.THUMB_PX / viewer.TIMELINE_PX
    for lane in set(lanes):
        mine = [left for left, own in zip(lefts, lanes, strict=True) if own == lane]
        assert all(b - a >= width for a, b in itertools.pairwise(mine))
