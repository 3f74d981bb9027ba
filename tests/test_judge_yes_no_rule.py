"""One P(yes) rule across backends (rewards.judges.base): the local judge under yes_no_from=top_k
gives exactly what the server judges compute from the same top tokens, NaN on the same answers;
``full`` reads the whole vocabulary and is never NaN for want of a yes/no token. And the judge
identity a rubric set records: the same config fingerprint for a model however it was loaded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from rewards.judges.base import NO_YES_NO_TOKEN, check_yes_no_from, config_fingerprint
from rewards.judges.openai_server import yes_prob_from_top
from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vlm("qwen2_5_vl", seed=0)


def _logits(judge: TransformersJudge, vocab: int, k: int) -> torch.Tensor:
    """Rows whose yes/no tokens sit inside the top k, at its edge, and outside it."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, vocab, generator=generator)
    yes, no = judge.yes_ids[0], judge.no_ids[0]
    logits[0, yes], logits[0, no] = 9.0, 8.0  # both in the top k
    logits[1, yes] = 9.0  # only yes in the top k
    logits[1, judge.no_ids] = -9.0
    logits[2, judge.yes_ids + judge.no_ids] = -9.0  # neither: NaN under top_k
    logits[3, no] = 9.0  # only no
    logits[3, judge.yes_ids] = -9.0
    top = logits[4].topk(k).values  # yes exactly k-th, no just outside
    logits[4, judge.yes_ids + judge.no_ids] = -9.0
    logits[4, yes], logits[4, no] = float(top[-1]) + 1e-3, float(top[-1]) - 1e-3
    return logits


@pytest.mark.parametrize("scoring", ["normalized", "raw"])
def test_local_top_k_equals_the_server_rule_on_the_same_tokens(tiny, scoring):
    model, processor = tiny
    k = 20
    judge = TransformersJudge(
        model=model, processor=processor, scoring=scoring, yes_no_from="top_k", top_k=k
    )
    logits = _logits(judge, model.config.text_config.vocab_size, k)
    local = judge.probs_from_logits(logits)
    log_probs = logits.log_softmax(-1)
    for row in range(logits.shape[0]):
        top = log_probs[row].topk(k)
        entries = [
            {"token": processor.tokenizer.decode([i]), "logprob": float(v)}
            for v, i in zip(top.values, top.indices.tolist())
        ]
        server = yes_prob_from_top(entries, scoring)
        if server is None:
            assert local[row].item() == -1.0  # the judge's NaN mark, reason added in yes_prob
        else:
            assert local[row].item() == pytest.approx(server, abs=1e-6)
    assert local[2].item() == -1.0  # neither among the top k
    if scoring == "normalized":
        assert local[1].item() == 1.0 and local[3].item() == 0.0
    full = TransformersJudge(model=model, processor=processor, scoring=scoring)
    assert full.yes_no_from == "full" and torch.isfinite(full.probs_from_logits(logits)).all()


def test_yes_prob_gives_the_servers_reason_for_an_answer_without_yes_or_no(tiny, monkeypatch):
    from PIL import Image

    from rewards.judges.base import JudgeItem

    model, processor = tiny
    judge = TransformersJudge(model=model, processor=processor, yes_no_from="top_k", top_k=1)
    vocab = model.config.text_config.vocab_size
    cold = torch.zeros(vocab)
    cold[judge.yes_ids + judge.no_ids] = -50.0  # the top token is never a yes or a no

    def scored(prepared):
        return cold.expand(len(prepared.item_indices), vocab).clone()

    monkeypatch.setattr(judge.scorer, "run", scored)
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    result = judge.yes_prob([JudgeItem(image, "a photo", "Is it purple?")] * 2)
    assert torch.isnan(result.probs).all()
    assert result.failures == {NO_YES_NO_TOKEN: 2}


def test_rule_options_are_checked(tiny):
    model, processor = tiny
    assert check_yes_no_from("full", 20) is None and check_yes_no_from("top_k", 5) == 5
    with pytest.raises(ValueError, match="yes_no_from must be one of"):
        TransformersJudge(model=model, processor=processor, yes_no_from="top20")
    with pytest.raises(ValueError, match="top_k >= 1"):
        TransformersJudge(model=model, processor=processor, yes_no_from="top_k", top_k=0)


def test_identity_names_the_model_and_its_rule_whatever_loaded_it(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    judge = TransformersJudge(model=model, processor=processor, yes_no_from="top_k", top_k=20)
    identity = judge.identity()
    assert identity["yes_no_from"] == "top_k" and identity["top_k"] == 20
    # vLLM's judge fingerprints AutoConfig of the folder; the local judge its loaded config.
    assert identity["fingerprint"] == config_fingerprint(
        AutoConfig.from_pretrained(tmp_path).to_dict()
    )
    assert TransformersJudge(model=model, processor=processor).identity()["top_k"] is None
    loaded_as_bf16 = AutoConfig.from_pretrained(tmp_path, dtype="bfloat16").to_dict()
    assert config_fingerprint(loaded_as_bf16) == identity["fingerprint"]  # dtype is no new model
    other = AutoConfig.from_pretrained(tmp_path).to_dict()
    other["text_config"]["num_hidden_layers"] += 1
    assert config_fingerprint(other) != identity["fingerprint"]
