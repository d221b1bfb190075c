"""TransformersServer and ScriptedServer honour verl's server contract on CPU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image
from verl.workers.rollout.replica import TokenOutput

from sparse_video_r1.serving.hf_server import DEFAULT_MAX_TOKENS, SamplingParams, ScriptedServer, TransformersServer

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 12}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def server(model_dir: Path) -> TransformersServer:
    return TransformersServer(model_dir, seed=0)


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (56, 56), (250, 0, 0)), Image.new("RGB", (84, 56), (0, 0, 250))]


def prompt_ids(server: TransformersServer, images: list[Image.Image]) -> list[int]:
    """What verl's agent loop sends: the chat template with each image's pads expanded."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "Question: What color?"}]
    text = server.processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return server.processor(text=[text], images=images or None)["input_ids"][0]


def generate(server: TransformersServer | ScriptedServer, request_id: str = "r", **kwargs) -> TokenOutput:
    return asyncio.run(server.generate(request_id, **kwargs))


def test_generate_with_images(server: TransformersServer) -> None:
    images = frames()
    out = generate(server, prompt_ids=prompt_ids(server, images), sampling_params=SAMPLING, image_data=images)
    assert isinstance(out, TokenOutput)
    assert 1 <= len(out.token_ids) <= 12
    assert len(out.token_ids) == 12 or out.token_ids[-1] == server.eos_token_id
    assert server.eos_token_id not in out.token_ids[:-1]
    assert out.stop_reason == "completed"
    assert len(out.log_probs) == len(out.token_ids) and all(lp <= 0.0 for lp in out.log_probs)
    assert server.image_token_id not in out.token_ids and server.video_token_id not in out.token_ids


def test_stop_token_ends_and_is_kept(server: TransformersServer) -> None:
    """A random model rarely samples eos, so make its greedy first token a stop token: vLLM keeps it."""
    ids = prompt_ids(server, [])
    params = {"temperature": 1.0, "top_k": 1, "max_tokens": 4, "stop_token_ids": []}
    greedy_first = generate(server, prompt_ids=ids, sampling_params=params).token_ids[0]
    out = generate(server, prompt_ids=ids, sampling_params={**params, "stop_token_ids": [greedy_first]})
    assert out.token_ids == [greedy_first]
    assert out.log_probs is None


def test_same_seed_same_tokens(model_dir: Path, server: TransformersServer) -> None:
    images = frames()
    ids = prompt_ids(server, images)

    async def rollout(srv: TransformersServer) -> list[TokenOutput]:
        return [
            await srv.generate(f"r{i}", prompt_ids=ids, sampling_params=SAMPLING, image_data=images) for i in range(2)
        ]

    first, second = (
        asyncio.run(rollout(TransformersServer(model_dir, seed=7))),
        asyncio.run(rollout(TransformersServer(model_dir, seed=7))),
    )
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    assert first[0].log_probs == pytest.approx(second[0].log_probs)
    assert first[0].token_ids != first[1].token_ids  # the per-request seed advances
    greedy = {"temperature": 0.0, "max_tokens": 6}
    a, b = (generate(server, prompt_ids=ids, sampling_params=greedy, image_data=images) for _ in range(2))
    assert a.token_ids == b.token_ids


def test_concurrent_requests_serialize(server: TransformersServer) -> None:
    ids = prompt_ids(server, [])

    async def many() -> list[TokenOutput]:
        calls = [server.generate(f"c{i}", prompt_ids=ids, sampling_params={"max_tokens": 3}) for i in range(4)]
        return await asyncio.gather(*calls)

    assert all(1 <= len(o.token_ids) <= 3 for o in asyncio.run(many()))


def test_mismatched_images_raise(server: TransformersServer) -> None:
    images = frames()
    ids = prompt_ids(server, images)
    with pytest.raises(ValueError, match=r"<\|image_pad\|> runs of lengths \[4, 6\]"):
        generate(server, prompt_ids=ids, sampling_params=SAMPLING, image_data=images[:1])
    with pytest.raises(ValueError, match="image_pad"):
        generate(server, prompt_ids=ids, sampling_params=SAMPLING, image_data=images[::-1])
    with pytest.raises(ValueError, match="image_pad"):
        generate(server, prompt_ids=ids, sampling_params=SAMPLING)
    with pytest.raises(NotImplementedError):
        generate(server, prompt_ids=ids, sampling_params=SAMPLING, video_data=[object()])


def test_sampling_params_parsing() -> None:
    assert SamplingParams.from_request({}).max_tokens == DEFAULT_MAX_TOKENS
    assert SamplingParams.from_request({"max_new_tokens": 7}).max_tokens == 7
    parsed = SamplingParams.from_request({"max_tokens": 5, "top_k": None, "logprobs": 1, "repetition_penalty": None})
    assert (parsed.max_tokens, parsed.top_k, parsed.logprobs, parsed.repetition_penalty) == (5, -1, True, 1.0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams.from_request({"max_tokens": 0})


def test_scripted_server_replays_turns(server: TransformersServer) -> None:
    tokenizer = server.tokenizer
    scripted = ScriptedServer(tokenizer, ["<frames>1.5, 3</frames>", "<answer>B</answer><|im_end|>"])
    first = generate(scripted, "a", prompt_ids=[1, 2], sampling_params={"logprobs": True})
    second = generate(scripted, "a", prompt_ids=[1, 2, 3], sampling_params={})
    other = generate(scripted, "b", prompt_ids=[4], sampling_params={"max_tokens": 2})
    assert tokenizer.decode(first.token_ids) == "<frames>1.5, 3</frames><|im_end|>"
    assert first.log_probs == [0.0] * len(first.token_ids)
    assert tokenizer.decode(second.token_ids) == "<answer>B</answer><|im_end|>" and second.log_probs is None
    assert other.token_ids == first.token_ids[:2]
    assert scripted.prompts == [[1, 2], [1, 2, 3], [4]]
    with pytest.raises(IndexError, match="turn 2"):
        generate(scripted, "a", prompt_ids=[1], sampling_params={})


def test_scripted_server_callable_policy(server: TransformersServer) -> None:
    seen: list[tuple[int, str]] = []

    def policy(ids: list[int], turn: int, request_id: str) -> str:
        seen.append((turn, request_id))
        return f"<answer>{'AB'[len(ids) % 2]}</answer>"

    scripted = ScriptedServer(server.tokenizer, policy)
    out = generate(scripted, "x", prompt_ids=[1, 2, 3], sampling_params={})
    assert server.tokenizer.decode(out.token_ids) == "<answer>B</answer><|im_end|>"
    assert seen == [(0, "x")]
