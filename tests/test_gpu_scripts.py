"""The GPU scripts' control logic on CPU: scripts/gpu/detached.sh (a job outlives the call that started it) and
the watchdog of scripts/gpu/needle_grpo.sh (a run that stops logging steps is stopped and resumed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from conftest import script_env

ROOT = Path(__file__).resolve().parents[1]


def detached(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "detached.sh"), *args],
        env={**os.environ, "DETACHED_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_job_runs_on_after_the_starting_call_and_later_calls_get_its_log_and_status(tmp_path: Path) -> None:
    started = detached(tmp_path, "job", "0", "bash", "-c", "echo first; sleep 2; echo second; exit 4")
    assert started.returncode == 0 and "still running" in started.stdout

    attached = detached(tmp_path, "job", "30")
    assert "attaching" in attached.stdout and "second" in attached.stdout
    assert attached.returncode == 4

    again = detached(tmp_path, "job", "30")
    assert again.returncode == 4 and "already ended with exit status 4" in again.stdout


def test_a_job_killed_from_outside_is_reported_as_vanished(tmp_path: Path) -> None:
    started = detached(tmp_path, "job", "0", "sleep", "30")
    assert started.returncode == 0
    pid = int((tmp_path / "job" / "pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)
    vanished = detached(tmp_path, "job", "5")
    assert vanished.returncode == 3 and "without an exit status" in vanished.stdout


def test_attaching_without_a_job_or_command_is_an_error(tmp_path: Path) -> None:
    result = detached(tmp_path, "nothing", "0")
    assert result.returncode == 2 and "no command given" in result.stdout


#: Stands in for the interpreter when it runs `-m verl.trainer.main_ppo` (verl needs a GPU): logs two steps and then
#: does FIRST_END (hangs or fails) on its first start, logs one step and exits on its second. Any other call goes to
#: the real interpreter.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$2" = verl.trainer.main_ppo ]; then
  starts=$WORK/starts
  echo start >> "$starts"
  if [ "$(wc -l < "$starts")" = 1 ]; then
    printf '{"step": 0}\n{"step": 1}\n' >> "$VERL_FILE_LOGGER_PATH"
    FIRST_END
  fi
  echo '{"step": 2}' >> "$VERL_FILE_LOGGER_PATH"
  exit 0
fi
exec REAL_PYTHON "$@"
"""


#: Stands in for the interpreter's `-m verl.trainer.main_ppo` in the `train` stage: notes when each run begins and ends.
FAKE_PYTHON_RUNS = """#!/usr/bin/env bash
if [ "$2" = verl.trainer.main_ppo ]; then
  name=$(printf '%s\n' "$@" | sed -n 's/^trainer.experiment_name=//p')
  echo "begin $name" >> "$WORK/runs.log"
  echo '{"step": 1}' >> "$VERL_FILE_LOGGER_PATH"
  sleep 1
  echo "end $name" >> "$WORK/runs.log"
  exit 0
fi
exec REAL_PYTHON "$@"
"""


#: Stands in for `-m verl.trainer.main_ppo` in the PARALLEL `train` stage: connects to Ray the way verl does with
#: `ray_init.address=auto`, notes its job id and seed, then waits until every run has begun (they run side by side).
FAKE_PYTHON_PARALLEL = """#!/usr/bin/env bash
if [ "$2" = verl.trainer.main_ppo ]; then
  args=$(printf '%s\\n' "$@")
  name=$(sed -n 's/^trainer.experiment_name=//p' <<< "$args")
  address=$(sed -n 's/^+ray_kwargs.ray_init.address=//p' <<< "$args")
  seed=$(sed -n 's/^data.seed=//p' <<< "$args")
  job=$(REAL_PYTHON -c "import ray; ray.init(address='$address', logging_level='ERROR')
print(ray.get_runtime_context().get_job_id())")
  echo "begin $name $job seed=$seed" >> "$WORK/runs.log"
  echo '{"step": 1}' >> "$VERL_FILE_LOGGER_PATH"
  for _ in $(seq 120); do [ "$(grep -c begin "$WORK/runs.log")" -ge "$RUNS" ] && break; sleep 1; done
  echo "end $name" >> "$WORK/runs.log"
  exit 0
fi
exec REAL_PYTHON "$@"
"""


def stand_in_python(tmp_path: Path, fake: str) -> Path:
    """``fake`` written as TMP/bin/python, REAL_PYTHON in it standing for the interpreter running the tests."""
    python = tmp_path / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(fake.replace("REAL_PYTHON", sys.executable))
    python.chmod(0o755)
    return python


def run_needle_stage(
    tmp_path: Path, stage: str, fake: str, deadline_s: int = 200, timeout_s: int = 120, **extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """needle_grpo.sh's ``stage`` with ``fake`` as its ``PYTHON`` (REAL_PYTHON: the interpreter running the tests)."""
    python = stand_in_python(tmp_path, fake)
    work = tmp_path / "work"
    (work / "sft").mkdir(parents=True, exist_ok=True)
    env = script_env(
        PYTHON=str(python),
        WORK=str(work),
        STAGE=stage,
        DEADLINE_S=str(deadline_s),
        PACK_S="0",
        **{"START_S": "30", "STALL_S": "2", "POLL_S": "1", **extra},
    )
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "needle_grpo.sh"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    return result, work


def run_needle_main(tmp_path: Path, first_end: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """needle_grpo.sh's `main` stage with the stand-in verl, whose first start ends with ``first_end``."""
    return run_needle_stage(tmp_path, "main", FAKE_PYTHON.replace("FIRST_END", first_end))


def test_needle_train_stage_runs_main_then_ablation_never_both_at_once(tmp_path: Path) -> None:
    result, work = run_needle_stage(tmp_path, "train", FAKE_PYTHON_RUNS, deadline_s=400)
    assert result.returncode == 0, result.stderr
    order = ["begin needle_main", "end needle_main", "begin needle_ablation", "end needle_ablation"]
    assert (work / "runs.log").read_text().splitlines() == order
    budgets = re.findall(r"(main|ablation): starting \(loss_on=\w+, at most (\d+)s", result.stdout)
    (first, main_budget), (second, ablation_budget) = budgets
    assert (first, second) == ("main", "ablation")
    assert int(main_budget) <= 200 < int(ablation_budget)  # main stops halfway to the 400-s deadline


def test_needle_parallel_runs_share_the_host_each_with_its_own_ray_job_id(tmp_path: Path) -> None:
    ray_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths under it must fit in 107 bytes
    extra = {"PARALLEL": "1", "RL_SEEDS": "0 1", "RUNS": "4", "RAY_SLOT_DIR": f"{ray_dir}/", "START_S": "120"}
    extra["STALL_S"] = "150"
    result, work = run_needle_stage(tmp_path, "train", FAKE_PYTHON_PARALLEL, deadline_s=400, timeout_s=300, **extra)
    assert result.returncode == 0, result.stdout + result.stderr
    events = (work / "runs.log").read_text().splitlines()
    begins = [line.split() for line in events if line.startswith("begin")]
    assert [line.split()[0] for line in events] == ["begin"] * 4 + ["end"] * 4  # all four side by side
    runs = {name: (job, seed) for _, name, job, seed in begins}
    assert set(runs) == {"needle_main", "needle_ablation", "needle_main_s1", "needle_ablation_s1"}
    # Distinct Ray job ids, so distinct weight-sync sockets: slot k's job id is k + 1 modulo 16.
    slots = {int.from_bytes(bytes.fromhex(job), "little") % 16 for job, _ in runs.values()}
    assert slots == {2, 3, 4, 5}
    assert runs["needle_main_s1"][1] == runs["needle_ablation_s1"][1] == "seed=1"
    assert runs["needle_main"][1] == "seed=0"
    leftover = subprocess.run(["pgrep", "-f", ray_dir], capture_output=True, text=True)
    assert leftover.stdout == ""  # every run's Ray cluster ended with it


def test_needle_watchdog_stops_a_run_that_stops_logging_steps_and_resumes_it(tmp_path: Path) -> None:
    result, work = run_needle_main(tmp_path, 'echo $$ > "$WORK/hung.pid"; exec sleep 300')
    assert result.returncode == 0, result.stderr
    assert (work / "starts").read_text().splitlines() == ["start", "start"]
    assert "no step logged for 2s" in result.stdout and "resuming from its last checkpoint" in result.stdout
    stalls = list((work / "runs" / "main").glob("stall_*.txt"))
    assert len(stalls) == 1 and "== processes ==" in stalls[0].read_text()
    hung = int((work / "hung.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the hung stand-in went with its process group
        os.kill(hung, 0)


def test_needle_run_that_fails_before_the_deadline_is_resumed(tmp_path: Path) -> None:
    result, work = run_needle_main(tmp_path, "echo 'RuntimeError: split_with_sizes' >&2; exit 1")
    assert result.returncode == 0, result.stderr
    assert (work / "starts").read_text().splitlines() == ["start", "start"]
    assert "exit status 1" in result.stdout and "resuming from its last checkpoint after a crash" in result.stdout
    assert "no step logged" not in result.stdout


def test_ray_slot_fails_at_once_naming_the_head_log_when_its_head_cannot_start(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 80)  # Ray's socket paths under it exceed AF_UNIX's 107 bytes
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "ray_slot.sh"), "1", "true"],
        env=script_env(RAY_SLOT_DIR=f"{too_long}/", RAY_SLOT_START_S="60"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "slot 1's head exited" in result.stderr and "AF_UNIX path length" in result.stderr


#: Stands in for `-m sparse_video_r1.tools.evaluate` in the `report` stage: every dialogue of --data answers right
#: after asking for the card's own time (adaptive) or sees uniform frames (uniform_N), written as evaluate does.
FAKE_EVALUATE = """
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
from sparse_video_r1.synthetic import needle
args = {flag: sys.argv[sys.argv.index(flag) + 1] for flag in ("--data", "--out", "--uniform")}
out = Path(args["--out"])
out.mkdir(parents=True, exist_ok=True)
infos = pq.read_table(args["--data"]).column("extra_info").to_pylist()
methods = ["adaptive", *(f"uniform_{n}" for n in args["--uniform"].split(","))]
for method in methods:
    with open(out / f"records_{method}.jsonl", "w") as handle:
        for info in infos:
            card = needle.Needle.from_extra_info(info)
            asked = [card.time] if method == "adaptive" else []
            handle.write(json.dumps({"qid": info["qid"], "correct": bool(asked), "stop_reason": "answered",
                                     "frames_used": 5, "assistant_turns": 1 + len(asked),
                                     "requested_timestamps": asked, "shown_timestamps": asked}) + "\\n")
"""


def test_needle_train_then_report_evaluates_every_run_on_a_fresh_test_set_and_tables_the_seeds(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fake_evaluate = tmp_path / "fake_evaluate.py"
    fake_evaluate.write_text(FAKE_EVALUATE)
    evaluate = f'if [ "$2" = sparse_video_r1.tools.evaluate ]; then exec REAL_PYTHON {fake_evaluate} "$@"; fi\n'
    fake = FAKE_PYTHON_RUNS.replace('exec REAL_PYTHON "$@"', evaluate + 'exec REAL_PYTHON "$@"')
    work = tmp_path / "work"
    for name in ("main", "ablation", "main_s1", "ablation_s1"):
        (work / "runs" / name / "hf_model").mkdir(parents=True)
    dumps = work / "runs" / "main" / "rollouts"
    (dumps / "dialogues").mkdir(parents=True)
    for step in range(1, 31):  # steps 1, 25 and the last come back; the dialogue records one step further, as in
        (dumps / f"{step}.jsonl").write_text("{}\n")  # attempt 5, where the deadline stopped verl before its dump
        (dumps / "dialogues" / f"{step}.jsonl").write_text("{}\n")
    (dumps / "dialogues" / "31.jsonl").write_text("{}\n")
    shutil.copytree(tiny_model_dir, work / "runs" / "main_s1" / "hf_model", dirs_exist_ok=True)
    (work / "runs" / "main_s1" / "hf_model_step.txt").write_text("40\n")
    extra = {"RL_SEEDS": "0 1", "TEST_VIDEOS": "6", "TEST_SEED": "1000", "MODELS_PART_MB": "1"}
    result, _ = run_needle_stage(tmp_path, "train,report", fake, deadline_s=800, timeout_s=300, **extra)  # 200 s a run
    assert result.returncode == 0, result.stdout + result.stderr
    assert len((work / "runs.log").read_text().splitlines()) == 8  # four runs began and ended, then the report
    out = tmp_path / "out"
    with tarfile.open(out / "needle_runs.tgz") as packed:  # the train stage's memory samples come back
        assert any(name.startswith("memory/") and name.endswith("host_memory.csv") for name in packed.getnames())
        packed_dumps = {name for name in packed.getnames() if name.startswith("runs/main/rollouts/")}
        assert packed_dumps == {f"runs/main/rollouts/{step}.jsonl" for step in (1, 25, 30)} | {
            f"runs/main/rollouts/dialogues/{step}.jsonl" for step in (1, 25, 31)
        }
    parts = sorted(out.glob("needle_models.tgz.part*"))  # 2.5 MB of model in parts of 1 MiB, each one $OUT file
    assert len(parts) >= 2 and all(part.stat().st_size <= 1 << 20 for part in parts)
    assert not (out / "needle_models.tgz").exists()
    (tmp_path / "joined.tgz").write_bytes(b"".join(part.read_bytes() for part in parts))
    with tarfile.open(tmp_path / "joined.tgz") as packed:
        names = set(packed.getnames())
        assert {"sft", "runs/main_s1/hf_model/config.json", "runs/main_s1/hf_model_step.txt"} <= names
        assert json.load(packed.extractfile("runs/main_s1/hf_model/config.json"))["dtype"] == "bfloat16"
    test_set = json.loads((work / "test_data.json").read_text())
    assert test_set["seed"] == 1000 and test_set["val"]["videos"] == 6 and test_set["train"]["videos"] == 0
    table = json.loads((out / "needle_table.json").read_text())
    methods = {(row["model"], row["method"]) for row in table}
    assert {("sft", f"uniform_{n}") for n in (4, 6, 8, 16, 32)} <= methods
    assert {("main_s1", "adaptive"), ("main_s1", "uniform_5"), ("ablation", "uniform_6")} <= methods
    assert all(row["samples"] == 6 for row in table)
    seeds = {(row["arm"], row["method"]): row for row in json.loads((out / "needle_seeds.json").read_text())}
    assert seeds[("main", "adaptive")]["seeds"] == [0, 1] and seeds[("main", "adaptive")]["accuracy"] == 1.0
    assert seeds[("ablation", "uniform_4")]["accuracy"] == 0.0


#: Stands in for `-m verl.trainer.main_ppo` when the host runs short: Ray's memory monitor reports killed workers
#: and the trainer waits for ever, as verl did in the 7B attempt (docs/results/realsize_7b/attempt1).
FAKE_PYTHON_RAY_OOM = """#!/usr/bin/env bash
if [ "$2" = verl.trainer.main_ppo ]; then
  echo '(raylet) node_manager.cc:3517: 15 Workers (tasks / actors) killed due to memory pressure (OOM)'
  echo $$ > "$WORK/hung.pid"
  exec sleep 300
fi
exec REAL_PYTHON "$@"
"""


def realsize_stand_in(tmp_path: Path, fake: str) -> tuple[Path, Path]:
    """``fake`` as the interpreter (REAL_PYTHON: the one running the tests), and a WORK whose data train.sh
    takes as already preprocessed: (interpreter, WORK)."""
    python = stand_in_python(tmp_path, fake)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    for split in ("train", "val"):  # train.sh only preprocesses when these are missing
        (work / "data" / f"{split}.parquet").touch()
    return python, work


def test_realsize_train_stage_stops_a_run_that_ray_starved_of_host_memory(tmp_path: Path) -> None:
    python, work = realsize_stand_in(tmp_path, FAKE_PYTHON_RAY_OOM)
    env = script_env(PYTHON=str(python), WORK=str(work), STAGES="train", OOM_GRACE_S="1", DEVICE="cpu")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "train_realsize.sh"), str(tmp_path / "out"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 137, result.stdout + result.stderr
    assert "Ray killed workers for host memory" in result.stdout
    assert "killed due to memory pressure" in (tmp_path / "out" / "grpo.log").read_text()
    hung = int((work / "hung.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the waiting trainer went with its process group
        os.kill(hung, 0)


#: The interpreter itself, for stages that need no stand-in.
PASS_THROUGH = '#!/usr/bin/env bash\nexec REAL_PYTHON "$@"\n'


def test_needle_prepare_takes_a_carried_cold_start_and_regenerates_the_same_data(tmp_path: Path) -> None:
    carried = tmp_path / "carried_sft"
    carried.mkdir()
    metrics = {"examples": 6, "first_epoch_loss": 2.0, "last_epoch_loss": 0.5, "seconds": 1.0}
    (carried / "sft_metrics.json").write_text(json.dumps(metrics))
    (carried / "model.safetensors").write_bytes(b"weights of an earlier machine")
    sizes = {"TRAIN": "3", "VAL": "2", "READING": "2"}
    runs = []
    for attempt in ("first", "second"):
        result, work = run_needle_stage(tmp_path / attempt, "prepare", PASS_THROUGH, SFT_FROM=str(carried), **sizes)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SFT cold start taken from" in result.stdout and not (work / "sft.log").exists()
        assert (work / "sft" / "model.safetensors").read_bytes() == b"weights of an earlier machine"
        runs.append(work)
    # Two machines' data are the same videos and rows once their paths agree (here WORK differs: compare the rest).
    first, second = (sorted((work / "data" / "videos").iterdir()) for work in runs)
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    rows = [(work / "data" / "traces.jsonl").read_text().replace(str(work), "WORK") for work in runs]
    assert rows[0] == rows[1]


def test_needle_prepare_refuses_a_cold_start_without_its_metrics_or_inside_work(tmp_path: Path) -> None:
    empty = tmp_path / "not_an_sft"
    empty.mkdir()
    small = {"TRAIN": "2", "VAL": "1", "READING": "1"}
    result, _ = run_needle_stage(tmp_path / "a", "prepare", PASS_THROUGH, SFT_FROM=str(empty), **small)
    assert result.returncode == 1 and f"SFT_FROM={empty} holds no sft_metrics.json" in result.stderr
    inside = tmp_path / "b" / "work" / "sft"
    inside.mkdir(parents=True)
    result, _ = run_needle_stage(tmp_path / "b", "prepare", PASS_THROUGH, SFT_FROM=str(inside))
    assert result.returncode == 1 and "lies in WORK, which prepare empties" in result.stderr


#: `-m verl.trainer.main_ppo` that runs out of host memory on its first start (and hangs, as verl did) and
#: logs a step on its second, noting the actor's param_offload setting each time.
FAKE_PYTHON_OOM_THEN_STEP = """#!/usr/bin/env bash
if [ "$2" = verl.trainer.main_ppo ]; then
  printf '%s\\n' "$@" | grep '^actor_rollout_ref.actor.fsdp_config.param_offload=' >> "$WORK/starts"
  if [ "$(wc -l < "$WORK/starts")" = 1 ]; then
    echo '(raylet) 3 Workers (tasks / actors) killed due to memory pressure (OOM)'
    exec sleep 300
  fi
  echo '{"step": 1}' >> "$VERL_FILE_LOGGER_PATH"
  exit 0
fi
exec REAL_PYTHON "$@"
"""


def test_realsize_session_retries_the_train_stage_with_retry_env_after_a_host_oom(tmp_path: Path) -> None:
    python, work = realsize_stand_in(tmp_path, FAKE_PYTHON_OOM_THEN_STEP)
    env = script_env(
        PYTHON=str(python), WORK=str(work), SESSION_STAGES="train", OOM_GRACE_S="1", PARAM_OFFLOAD="True",
        RETRY_ENV="PARAM_OFFLOAD=False",
    )  # fmt: skip
    results = tmp_path / "results"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu" / "realsize_session.sh"), str(results), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    starts = (work / "starts").read_text().split()
    assert starts == [f"actor_rollout_ref.actor.fsdp_config.param_offload={flag}" for flag in ("True", "False")]
    run = results / "run"
    assert "killed due to memory pressure" in (run / "attempt1" / "grpo.log").read_text()
    assert "killed due to memory pressure" not in (run / "grpo.log").read_text()
    assert (run / "metrics.jsonl").read_text().strip() == '{"step": 1}'
    with tarfile.open(results / "realsize.tgz") as packed:
        assert {"run/attempt1/grpo.log", "run/grpo.log"} <= set(packed.getnames())
