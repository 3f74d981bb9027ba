"""The K-images-per-prompt sampler: whole groups per epoch, one permutation on every rank."""

import json
from collections import Counter

import pytest

from rl.sampler import GroupLayout, GroupSampler, SamplerConfigError, load_prompts


def make_layout(**kw) -> GroupLayout:
    base = dict(num_prompts=10, group_size=4, groups_per_epoch=3, batch_size=2, num_processes=3)
    return GroupLayout(**(base | kw))


def test_every_rank_agrees_and_each_prompt_appears_k_times():
    layout = make_layout()
    assert layout.batches_per_epoch == 2
    samplers = [GroupSampler(layout, rank=r, seed=7) for r in range(3)]
    per_rank = [s.next_epoch_batches() for s in samplers]
    for batches in per_rank:
        assert [len(b) for b in batches] == [2, 2]
    # the ranks' slices reassemble the shared epoch list
    epoch = samplers[0].epoch_indices(0)
    for r, batches in enumerate(per_rank):
        assert epoch[:, r].tolist() == batches
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert len(counts) == 3 and set(counts.values()) == {4}
    # a group is spread over ranks: no rank holds all 4 images of every group
    assert any(
        len({r for r, batches in enumerate(per_rank) if p in sum(batches, [])}) > 1 for p in counts
    )


def test_epochs_differ_and_state_round_trips():
    layout = make_layout()
    a = GroupSampler(layout, rank=1, seed=3)
    first, second = a.next_epoch_batches(), a.next_epoch_batches()
    assert first != second
    b = GroupSampler(layout, rank=1, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.next_epoch_batches() == a.next_epoch_batches()


def test_state_from_another_layout_is_refused():
    a = GroupSampler(make_layout(), rank=0, seed=3)
    b = GroupSampler(make_layout(num_processes=6, batch_size=1), rank=0, seed=3)
    with pytest.raises(ValueError, match="differs"):
        b.load_state_dict(a.state_dict())


def test_impossible_combination_names_the_numbers_in_one_message():
    layout = make_layout(group_size=24, groups_per_epoch=1, batch_size=2, num_processes=7)
    with pytest.raises(SamplerConfigError) as err:
        GroupSampler(layout, rank=0, seed=0)
    message = str(err.value)
    assert message.count("\n") == 0
    for number in ("groups_per_epoch 1", "group_size 24", "num_processes 7", "batch_size 2", "14"):
        assert number in message


def test_more_groups_than_prompts_is_refused():
    with pytest.raises(SamplerConfigError, match="exceeds the 2 prompts"):
        GroupSampler(make_layout(num_prompts=2, groups_per_epoch=3), rank=0, seed=0)


def test_load_prompts_from_list_txt_and_jsonl(tmp_path):
    assert load_prompts(["a", "b"], None) == (["a", "b"], [{}, {}])
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n a dog \n")
    assert load_prompts(None, str(txt))[0] == ["a cat", "a dog"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "x", "tag": 1}\n{"prompt": "y"}\n')
    assert load_prompts(None, str(jsonl)) == (["x", "y"], [{"tag": 1}, {}])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(None, str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="exactly one"):
        load_prompts(["a"], str(txt))


def test_malformed_jsonl_prompt_file_names_the_file_and_line(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "x"}\n\n{"prompt": "y",\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3 is not valid JSON"):
        load_prompts(None, str(jsonl))
    jsonl.write_text('{"prompt": "x"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2 has no 'prompt' field"):
        load_prompts(None, str(jsonl))
