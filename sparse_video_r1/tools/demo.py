"""See the whole frame-request loop run on a CPU, through the same code that training uses.

    python -m sparse_video_r1.tools.demo [--samples 3] [--work DIR] [--sft-epochs 6]

It builds the tiny random Qwen2.5-VL and a few generated videos, gives the model a short supervised cold
start on protocol-following dialogues (a random model never asks for frames), then runs the verl agent
loop with a transformers-backed server and prints each dialogue: the model's turns, the timestamps it
asked for, the frames it was shown, its answer against the truth, and the reward.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from sparse_video_r1.env.config import DialogueRules, SparseVideoConfig
from sparse_video_r1.env.dialogue import VideoQA
from sparse_video_r1.env.frames import FrameSampler
from sparse_video_r1.env.protocol import OPTION_LETTERS
from sparse_video_r1.serving.hf_server import TransformersServer
from sparse_video_r1.synthetic.tiny_model import build_tiny_qwen2_5_vl
from sparse_video_r1.synthetic.videos import write_index_video
from sparse_video_r1.training.reward import compute_score
from sparse_video_r1.training.sft import SFTConfig, synthetic_traces, train
from sparse_video_r1.training.standalone import make_agent_loop, run_dialogues, split_turns

DIALOGUE = SparseVideoConfig(
    DialogueRules(initial_frames=4, max_frames_per_request=3, max_total_frames=10, max_turns=3)
)
FPS = 5.0
#: Each demo question appears in this many cold-start traces, each with other random requests.
COPIES = 40
QUESTIONS = [
    ("what does the person do after opening the door", ["sits down", "waves", "runs", "reads", "sleeps"]),
    ("how many cars pass by", ["one", "two", "three", "four", "none"]),
    ("why does the dog bark", ["hungry", "stranger", "playing", "scared", "bored"]),
]


def make_samples(work: Path, count: int, seed: int) -> list[dict]:
    """Video questions over generated index videos of 10-30 s (their content is frame numbers only)."""
    rng = random.Random(seed)
    samples = []
    for number in range(count):
        seconds = rng.randint(10, 30)
        video = write_index_video(work / "videos" / f"video_{number}.mp4", num_frames=int(seconds * FPS), fps=FPS)
        question, options = QUESTIONS[number % len(QUESTIONS)]
        samples.append(
            {
                "qid": f"demo_{number}",
                "video_path": str(video),
                "question": question,
                "options": options,
                "answer": OPTION_LETTERS[rng.randrange(len(options))],
            }
        )
    return samples


def cold_start(work: Path, model: Path, samples: list[dict], epochs: int) -> Path:
    """SFT on uninformed protocol traces so the tiny model writes valid requests and answers."""
    qa = [VideoQA.from_extra_info(sample) for sample in samples]
    sampler = FrameSampler.from_config(DIALOGUE.decoding)
    durations = [sampler.info(sample.video_path).duration for sample in qa]
    traces = synthetic_traces(qa * COPIES, durations * COPIES, DIALOGUE.dialogue, seed=1, request_probability=0.8)
    traces_path = work / "traces.jsonl"
    traces_path.write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    out = work / "sft"
    train(SFTConfig(str(model), str(traces_path), str(out), epochs=epochs, lr=1e-3), DIALOGUE)
    return out


def show(sample: dict, output, tokenizer) -> None:
    fields = output.extra_fields
    reward = compute_score("demo", tokenizer.decode(output.response_ids), sample["answer"], fields)
    print(f"\n=== {sample['qid']}: {sample['question']}?  ({fields['video_duration']:.1f} s video)")
    for letter, option in zip(OPTION_LETTERS, sample["options"], strict=False):
        print(f"    {letter}. {option}")
    initial = fields["shown_timestamps"][: DIALOGUE.dialogue.initial_frames]
    print(f"  [environment] initial frames at {', '.join(f'{t:.1f}s' for t in initial)}")
    for turn in split_turns(tokenizer, output):
        print(f"  [{turn.speaker}] {turn.text}")
    print(f"  requested timestamps: {fields['requested_timestamps']}")
    print(f"  frames shown: {fields['frames_used']} at {[round(t, 1) for t in fields['shown_timestamps']]}")
    print(f"  stop: {fields['stop_reason']}; answer {fields['predicted_answer']} vs truth {sample['answer']}")
    print(f"  reward: {reward}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--sft-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the model, videos and checkpoint here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="svr1_demo_"))
    steps = tqdm(total=4, desc="demo", unit="step")
    steps.set_postfix_str("tiny model")
    model = build_tiny_qwen2_5_vl(work / "tiny", seed=args.seed)
    steps.update()
    steps.set_postfix_str("videos")
    samples = make_samples(work, args.samples, args.seed)
    steps.update()
    steps.set_postfix_str("SFT cold start")
    checkpoint = cold_start(work, model, samples, args.sft_epochs)
    steps.update()
    steps.set_postfix_str("dialogues")
    server = TransformersServer(checkpoint, seed=args.seed)
    loop = make_agent_loop(checkpoint, server, DIALOGUE, prompt_length=2048, response_length=2048)
    outputs = [run_dialogues(loop, [sample], {"temperature": 1.0, "top_p": 1.0})[0] for sample in tqdm(samples)]
    steps.update()
    steps.close()
    for sample, output in zip(samples, outputs, strict=True):
        show(sample, output, loop.tokenizer)
    print(f"\nmodel, videos and SFT checkpoint: {work}")


if __name__ == "__main__":
    main()
