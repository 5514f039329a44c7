"""Pretraining text: the held-out split and packing into blocks."""

from lit_instruct.data.pretraining import pack_documents, pretrain_split


def test_pretrain_split_is_disjoint_and_deterministic():
    train, heldout = pretrain_split()
    assert heldout and train and not set(train) & set(heldout)
    assert pretrain_split() == (train, heldout)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.2


def test_packing_joins_documents_with_eos_into_full_blocks(tokenizer):
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    blocks = pack_documents(tokenizer, docs, block_size=4)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert all(len(b["input_ids"]) == 4 and b["labels"] == b["input_ids"] for b in blocks)
    assert [t for b in blocks for t in b["input_ids"]] == stream[: len(blocks) * 4]
    assert len(blocks) == len(stream) // 4
