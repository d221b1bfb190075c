"""Known verl bugs that our runs meet, reproduced with the real verl functions so the suite notices a fix.

Each test is a strict xfail: it fails today with verl's error, and turns into an unexpected pass (a failing
suite) the day an upgraded verl fixes it, which is when the workaround it documents can go.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from verl.utils.tensordict_utils import index_select_tensor_dict, maybe_fix_3d_position_ids
from verl.workers.utils.padding import left_right_2_no_padding

BATCH, WIDTH, RESPONSE = 4, 30, 10


def mrope_batch(lengths: list[int]) -> TensorDict:
    """A left/right-padded batch as verl's actor gets it from a Qwen2.5-VL rollout: position_ids (B, 4, S)."""
    attention_mask = torch.zeros(BATCH, WIDTH, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, WIDTH - length :] = 1  # left-padded prompt, full-length response
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return TensorDict(
        {
            "input_ids": torch.randint(0, 100, (BATCH, WIDTH)),
            "attention_mask": attention_mask,
            "response_mask": attention_mask[:, -RESPONSE:].clone(),
            "position_ids": positions.unsqueeze(1).expand(BATCH, 4, WIDTH).clone(),
        },
        batch_size=[BATCH],
    )


def select_micro_batch(lengths: list[int]) -> TensorDict:
    """What verl's engine worker does before each update: unpad, fix the mRoPE ragged index, select rows."""
    data = left_right_2_no_padding(mrope_batch(lengths))
    maybe_fix_3d_position_ids(data)
    return index_select_tensor_dict(data, [0, 1])


def test_unpadding_mrope_position_ids_works_when_lengths_differ() -> None:
    selected = select_micro_batch([20, 20, 20, 25])
    assert [ids.shape for ids in selected["position_ids"].unbind()] == [torch.Size([4, 20])] * 2


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="verl issue #6073 (fix proposed in PR #5829, closed): when every sample of a batch has the same "
    "unpadded length, torch makes the 4-axis of the (B, 4, S) mRoPE position_ids the ragged one and "
    "maybe_fix_3d_position_ids' hard-coded _ragged_idx=2 breaks indexing. Our needle runs met it when all 64 "
    "dialogues of a step answered at once (attempt 3, step 31); scripts/gpu/needle_grpo.sh resumes such a run.",
)
def test_unpadding_mrope_position_ids_when_every_sample_has_the_same_length() -> None:
    select_micro_batch([20, 20, 20, 20])
