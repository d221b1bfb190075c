"""Evaluation on CPU: NExT-QA-shaped parquet (real annotation rows, generated videos), the tiny model through the
transformers backend, and scripted policies where the test needs to know the answers the model gives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import script_env
from verl.utils.tokenizer import hf_tokenizer

from sparse_video_r1.data import preprocess_split, read_nextqa_split
from sparse_video_r1.data.nextqa import QUESTION_GROUPS
from sparse_video_r1.env.config import DecodingConfig, DialogueRules, SparseVideoConfig
from sparse_video_r1.serving.hf_server import ScriptedServer
from sparse_video_r1.synthetic.nextqa import write_nextqa_like_release
from sparse_video_r1.tools import eval_report, evaluate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "nextqa"
REQUEST = "<think>Let me look closer.</think><frames>1.0, 4.0</frames>"
ANSWER_A = "<think>Enough.</think><answer>A</answer>"
METHODS = ("adaptive", "uniform_2", "uniform_4")
METRICS = {
    "n",
    "correct",
    "accuracy",
    "accuracy_by_group",
    "accuracy_by_type",
    "frames_used_mean",
    "frames_used_median",
    "visual_tokens_mean",
    "visual_tokens_median",
    "assistant_turns_mean",
    "stop_reasons",
    "answered_share",
    "invalid_share",
    "invalid_reasons",
    "failure_reasons",
    "truncated_share",
    "context_limit_share",
    "dialogue_seconds_mean",
    "wall_seconds",
    "questions_per_second",
}


@pytest.fixture(scope="module")
def val_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's 12 val questions (3 videos, all eight types) as preprocessed rows over generated videos."""
    root = tmp_path_factory.mktemp("nextqa")
    write_nextqa_like_release(FIXTURES, root / "raw", {"val": "val.csv"}, videos_per_split=3, max_seconds=20.0)
    return preprocess_split(read_nextqa_split(root / "raw", "val"), root / "data").output


def cli(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    dialogue = ["--initial-frames", "2", "--max-frames-per-request", "2", "--max-total-frames", "6", "--max-turns", "3"]
    paths = ["--model", str(model), "--data", str(data), "--out", str(out)]
    return [*paths, "--backend", "transformers", "--uniform", "2,4", "--max-tokens-per-turn", "24", *dialogue, *extra]


def settings(model: Path, data: Path, out: Path, *extra: str) -> evaluate.EvalSettings:
    return evaluate.settings_from_args(evaluate.parse_args(cli(model, data, out, *extra)))


class CountingServer:
    """A scripted policy that answers A, asking for two frames first when it may; counts generate calls."""

    def __init__(self, model: Path) -> None:
        tokenizer = hf_tokenizer(str(model))

        def policy(prompt_ids: list[int], turn: int, request_id: str) -> str:
            may_request = "Turns left" in tokenizer.decode(prompt_ids)
            return REQUEST if turn == 0 and may_request else ANSWER_A

        self.server = ScriptedServer(tokenizer, policy)
        self.calls = 0

    async def generate(self, request_id: str, **kwargs: Any):
        self.calls += 1
        return await self.server.generate(request_id, **kwargs)


def run_scripted(config: evaluate.EvalSettings) -> tuple[dict[str, Any], int, int]:
    """(results, generate calls, servers made): a server is made only if some question is left to play."""
    servers: list[CountingServer] = []

    def make() -> CountingServer:
        servers.append(CountingServer(Path(config.model)))
        return servers[-1]

    results = evaluate.evaluate(config, make)
    return results, sum(server.calls for server in servers), len(servers)


def no_server() -> None:
    raise AssertionError("no server should be needed")


def record_lines(out: Path, method: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"records_{method}.jsonl").read_text().splitlines()]


def test_cli_with_the_tiny_model_writes_every_method_metric_and_setting(tiny_model_dir, val_parquet, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate.main(cli(tiny_model_dir, val_parquet, out, "--limit", "3", "--temperature", "0.7", "--seed", "5"))

    results = json.loads((out / "results.json").read_text())
    setting = results["settings"]
    assert setting["model"] == str(tiny_model_dir.resolve()) and setting["data"] == str(val_parquet.resolve())
    assert (setting["backend"], setting["limit"], setting["seed"], setting["questions"]) == ("transformers", 3, 5, 3)
    assert setting["sampling_params"] == {"temperature": 0.7, "top_p": 1.0}
    assert setting["max_model_len"] == setting["prompt_length"] + setting["response_length"]
    assert {"git_commit", "git_dirty", "command", "batch_size", "written_at"} <= set(setting)
    assert list(results["methods"]) == list(METHODS)
    for name, method in results["methods"].items():
        assert set(method["metrics"]) == METRICS, name
        assert method["metrics"]["n"] == 3
        assert sum(method["metrics"]["stop_reasons"].values()) == 3
        assert method["settings"]["decoding"]["max_pixels"] == 128 * 28 * 28
        assert method["settings"]["decoding"]["max_visual_tokens_per_frame"] == 128
        assert method["settings"]["dialogue"]["max_tokens_per_turn"] == 24
        assert len(record_lines(out, name)) == 3
    adaptive = results["methods"]["adaptive"]["settings"]["dialogue"]
    assert (adaptive["initial_frames"], adaptive["max_total_frames"], adaptive["allows_requests"]) == (2, 6, True)
    uniform = results["methods"]["uniform_4"]["settings"]["dialogue"]
    assert (uniform["initial_frames"], uniform["max_total_frames"], uniform["max_turns"]) == (4, 4, 1)
    assert not uniform["allows_requests"]
    # The tiny random model rarely answers, but every uniform_4 dialogue saw exactly 4 frames.
    for record in record_lines(out, "uniform_4"):
        assert record["frames_used"] == 4 and record["assistant_turns"] == 1
    table = (out / "table.md").read_text()
    assert all(f"| {name} | 3 |" in table for name in METHODS)
    assert table in capsys.readouterr().out
    assert (out / "accuracy_vs_frames.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "dialogues.html").read_text().count('<section class="dialogue"') == 3


def test_a_rerun_resumes_skipping_done_questions_and_retrying_errors(tiny_model_dir, val_parquet, tmp_path):
    out = tmp_path / "eval"
    first, calls, _ = run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "3"))
    assert calls == 3 * 2 + 3 + 3  # adaptive: request then answer; each uniform: one answer

    again, calls, servers = run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "3"))
    assert (calls, servers) == (0, 0)
    assert again["methods"]["adaptive"]["metrics"]["accuracy"] == first["methods"]["adaptive"]["metrics"]["accuracy"]

    more, calls, _ = run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "5"))
    assert calls == 2 * 2 + 2 + 2
    assert all(len(record_lines(out, name)) == 5 for name in METHODS)
    assert more["methods"]["uniform_2"]["metrics"]["n"] == 5

    failed = {**record_lines(out, "uniform_2")[0], "stop_reason": "error", "predicted_answer": None, "correct": False}
    with (out / "records_uniform_2.jsonl").open("a") as handle:
        handle.write(json.dumps(failed) + "\n")
    retried, calls, _ = run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "5"))
    assert calls == 1
    assert retried["methods"]["uniform_2"]["metrics"]["stop_reasons"] == {"answered": 5}
    assert len(record_lines(out, "uniform_2")) == 7  # the error line stays; the newest record of a qid counts


def test_resuming_with_other_settings_is_refused_but_new_methods_may_join(tiny_model_dir, val_parquet, tmp_path):
    out = tmp_path / "eval"
    run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "2"))
    with pytest.raises(ValueError, match="temperature"):
        evaluate.evaluate(settings(tiny_model_dir, val_parquet, out, "--limit", "2", "--temperature", "1"), no_server)
    with pytest.raises(ValueError, match=r"adaptive\.max_turns: 3 there, 2 now"):
        evaluate.evaluate(settings(tiny_model_dir, val_parquet, out, "--limit", "2", "--max-turns", "2"), no_server)
    grown, calls, _ = run_scripted(settings(tiny_model_dir, val_parquet, out, "--limit", "2", "--uniform", "2,4,8"))
    assert calls == 2  # only uniform_8 is new
    assert list(grown["methods"]) == [*METHODS, "uniform_8"]


def test_accuracy_by_group_and_type_matches_the_answers_of_a_policy_that_always_says_a(
    tiny_model_dir, val_parquet, tmp_path
):
    results, _, _ = run_scripted(settings(tiny_model_dir, val_parquet, tmp_path / "eval", "--viewer-samples", "2"))
    rows = pq.read_table(val_parquet).column("extra_info").to_pylist()
    assert len({row["question_type"] for row in rows}) == 8

    def expected(selected: Sequence[dict[str, Any]]) -> float:
        return sum(row["answer"] == "A" for row in selected) / len(selected)

    for name in METHODS:
        metrics = results["methods"][name]["metrics"]
        assert metrics["accuracy"] == pytest.approx(expected(rows))
        for group in ("Causal", "Temporal", "Descriptive"):
            in_group = [row for row in rows if QUESTION_GROUPS[row["question_type"]] == group]
            assert metrics["accuracy_by_group"][group] == {
                "n": len(in_group),
                "correct": sum(row["answer"] == "A" for row in in_group),
                "accuracy": pytest.approx(expected(in_group)),
            }
        for qtype in QUESTION_GROUPS:
            of_type = [row for row in rows if row["question_type"] == qtype]
            assert metrics["accuracy_by_type"][qtype]["accuracy"] == pytest.approx(expected(of_type))
    adaptive = results["methods"]["adaptive"]["metrics"]
    assert (adaptive["frames_used_mean"], adaptive["assistant_turns_mean"]) == (4, 2)
    uniform_2, uniform_4 = (results["methods"][name]["metrics"] for name in ("uniform_2", "uniform_4"))
    assert uniform_4["visual_tokens_mean"] == 2 * uniform_2["visual_tokens_mean"] == adaptive["visual_tokens_mean"]
    html = (tmp_path / "eval" / "dialogues.html").read_text()
    assert html.count('<section class="dialogue"') == 2
    assert html.count("<img") == 2 * 4  # two opening frames and two requested ones per dialogue


def record(qtype: str | None, correct: bool, stop: str = "answered", **fields: Any) -> dict[str, Any]:
    return {
        "question_type": qtype,
        "correct": correct,
        "stop_reason": stop,
        "frames_used": 4,
        "visual_tokens": 512,
        "assistant_turns": 1,
        "seconds": 1.0,
        "run_id": "a",
        "run_elapsed_s": 1.0,
        **fields,
    }


def test_summarize_hand_made_records():
    records = [
        record("CW", True, frames_used=8, run_elapsed_s=3.0),
        record("CH", False, "invalid_turn", invalid_reason="no_action"),
        record("TN", True, frames_used=12, assistant_turns=3),
        record("TC", True, run_id="b", run_elapsed_s=2.0),
        record("DL", False, "truncated", frames_used=2),
        record(None, True, "answered"),
        record("DO", False, "context_limit", visual_tokens=100),
        record("DC", False, "video_error", failure_reason="decode_failed"),
        record("DC", False, "video_error", failure_reason="unreadable"),
        record("TP", False, "decode_timeout", failure_reason="decode_timeout"),
    ]
    metrics = eval_report.summarize(records)
    assert metrics["stop_reasons"]["video_error"] == 2
    assert metrics["failure_reasons"] == {"decode_failed": 1, "decode_timeout": 1, "unreadable": 1}
    records = records[:7]
    metrics = eval_report.summarize(records)
    assert metrics["failure_reasons"] == {}
    assert (metrics["n"], metrics["correct"]) == (7, 4)
    assert metrics["accuracy"] == pytest.approx(4 / 7)
    assert list(metrics["accuracy_by_group"]) == ["Causal", "Temporal", "Descriptive", "Other"]
    assert metrics["accuracy_by_group"]["Causal"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert metrics["accuracy_by_group"]["Temporal"] == {"n": 2, "correct": 2, "accuracy": 1.0}
    assert metrics["accuracy_by_group"]["Descriptive"] == {"n": 2, "correct": 0, "accuracy": 0.0}
    assert metrics["accuracy_by_group"]["Other"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert metrics["accuracy_by_type"]["unknown"]["n"] == 1 and metrics["accuracy_by_type"]["CW"]["accuracy"] == 1.0
    assert metrics["frames_used_mean"] == pytest.approx(38 / 7) and metrics["frames_used_median"] == 4
    assert metrics["visual_tokens_median"] == 512
    assert metrics["assistant_turns_mean"] == pytest.approx(9 / 7)
    assert metrics["stop_reasons"] == {"answered": 4, "context_limit": 1, "invalid_turn": 1, "truncated": 1}
    assert metrics["invalid_reasons"] == {"no_action": 1}
    shares = [metrics[key] for key in ("answered_share", "invalid_share", "truncated_share", "context_limit_share")]
    assert shares == pytest.approx([4 / 7, 1 / 7, 1 / 7, 1 / 7])
    assert metrics["wall_seconds"] == 5.0  # run a lasted 3 s, run b 2 s
    assert metrics["questions_per_second"] == pytest.approx(7 / 5)
    empty = eval_report.summarize([])
    assert (empty["n"], empty["accuracy"], empty["questions_per_second"]) == (0, None, None)
    table = eval_report.markdown_table({"adaptive": metrics, "uniform_4": empty})
    assert "| adaptive | 7 | 57.1 | 50.0 | 100.0 | 0.0 | 100.0 |" in table
    assert "| uniform_4 | 0 | - |" in table


def test_baselines_are_single_turn_with_n_frames_and_share_the_other_settings():
    adaptive = SparseVideoConfig(
        DialogueRules(initial_frames=4, max_total_frames=16, max_turns=4), DecodingConfig(max_pixels=200704)
    )
    methods = evaluate.build_methods(adaptive, [8, 32])
    assert [m.name for m in methods] == ["adaptive", "uniform_8", "uniform_32"]
    baseline = methods[2].dialogue
    assert (baseline.initial_frames, baseline.max_total_frames, baseline.max_turns) == (32, 32, 1)
    assert not baseline.allows_requests
    assert all(m.config.decoding == adaptive.decoding for m in methods)  # so they share one frame sampler
    assert evaluate.default_prompt_length(methods) == 1024 + 32 * (256 + 16)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate.build_methods(adaptive, [], with_adaptive=False)


def test_the_evaluate_template_passes_flags_the_cli_accepts(tmp_path):
    env = script_env(PRINT_COMMAND="1", DATA_DIR=str(tmp_path), MODEL_PATH="m", MAX_TOTAL_FRAMES="12")
    printed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "evaluate.sh"), "--limit", "5"], env=env, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    command = printed.stdout.splitlines()
    assert command[:3] == [sys.executable, "-m", "sparse_video_r1.tools.evaluate"]
    args = evaluate.parse_args(command[3:])
    assert (args.data, args.backend, args.uniform, args.limit) == (f"{tmp_path}/val.parquet", "vllm", (4, 8, 16, 32), 5)
    assert (args.max_total_frames, args.max_pixels, args.prompt_length) == (12, 100352, None)
