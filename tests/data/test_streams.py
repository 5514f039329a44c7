"""PPO's global prompt and ptx streams: the same global order whatever the number of processes, re-split on resume."""

import pytest
import torch

from lit_instruct import PPODataModule
from lit_instruct.data.streams import PromptStream, ptx_indices


def taken(prompts, batch_size, world_size, start, steps):
    """The prompts all ranks take in ``steps`` steps from global position ``start``, in global (rank-major) order."""
    streams = [iter(PromptStream(prompts, batch_size, seed=3, rank=r, world_size=world_size, start=start))
               for r in range(world_size)]
    return [p for _ in range(steps) for s in streams for p in next(s)]


@pytest.mark.parametrize("size", [12, 10])  # passes that the global batch divides, and passes it straddles
def test_the_global_order_does_not_depend_on_the_number_of_processes(size):
    prompts = [f"p{i}" for i in range(size)]
    one = taken(prompts, 4, 1, 0, 9)  # 36 prompts: three passes and more
    assert taken(prompts, 2, 2, 0, 9) == one and taken(prompts, 1, 3, 0, 12) == one
    for k in range(0, 36, size):  # each pass is a permutation, reshuffled
        assert sorted(one[k:k + size]) == sorted(prompts) or k + size > 36
    assert one[:size] != one[size:2 * size]


def test_a_resume_on_another_process_count_continues_at_the_next_unconsumed_prompt():
    prompts = [f"p{i}" for i in range(10)]
    one = taken(prompts, 4, 1, 0, 6)  # 24 prompts on one process
    # 2 steps on 1 process (8 prompts), then 2 processes of 4 (8 per step), then 3 processes of 1
    assert taken(prompts, 4, 1, 0, 2) + taken(prompts, 4, 2, 8, 1) + taken(prompts, 1, 3, 16, 2) == one[:22]
    assert ptx_indices(6, 2, 1, 2, 7) == [1, 2]  # rank 1 of 2 at block 6: global blocks 8 and 9, wrapped


def test_datamodule_state_is_global_and_reads_old_per_process_checkpoints(tokenizer):
    dm = PPODataModule(rollout_batch_size=4, ptx_block_size=32, max_prompt_tokens=48)
    dm.connect(tokenizer, 48)
    dm.load()
    batch = dm.ptx_batch(3)
    assert batch["input_ids"].shape == (3, 32) and dm.consumed_ptx_blocks == 3
    assert torch.equal(batch["input_ids"][0], torch.tensor(dm.ptx_blocks[0]["input_ids"]))
    assert dm.state_dict() == {"consumed_prompts": 0, "consumed_ptx_blocks": 3, "world_size": 1}
    dm.load_state_dict({"consumed_rollouts": 5, "consumed_ptx": 4})  # before the global streams: counted per process
    assert dm.consumed_prompts == 20
    dm.ptx_batch(2)
    assert dm.consumed_ptx_blocks == 4 * 2 + 2
    dm.load_state_dict({"consumed_prompts": 7, "consumed_ptx_blocks": 9, "world_size": 2})
    assert next(iter(dm.train_dataloader())) == [dm.train_prompts[i] for i in PromptStream(dm.train_prompts, 4, 0).indices(7)]
