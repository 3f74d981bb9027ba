"""One prompt, whichever backend judges.

The OpenAI-compatible judge's request is rendered through the published Qwen3-VL-8B-Instruct and
Qwen2.5-VL-7B-Instruct chat templates (tests/data/chat_templates, sources in SOURCES.md) as an
OpenAI-compatible server renders it: the messages through the template, the image placeholder
expanded by the model's processor. The token ids must be exactly those the local transformers
judge (same template, tiny random model) feeds its model, and the text exactly the one its
shared-prefix modes split into prefix and suffix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewards.judges.base import JudgeItem, judge_text
from rewards.judges.openai_server import OpenAIJudge, decode_data_url
from rewards.judges.prefix_scoring import ChatPrompt
from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
PUBLISHED = {"qwen3_vl": "Qwen3-VL-8B-Instruct.jinja", "qwen2_5_vl": "Qwen2.5-VL-7B-Instruct.jinja"}
CONTEXT = "A photo of a cat sitting on a sofa."
QUESTIONS = ["Is the cat on the sofa?", "  Is there exactly one cat?\n", "Is the sofa red?"]


def _items() -> list[JudgeItem]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 32, 3), dtype=np.uint8))
    return [JudgeItem(image, CONTEXT, q) for q in QUESTIONS] + [JudgeItem(image, "", "Is it?")]


def _openai_requests(items: list[JudgeItem], monkeypatch) -> list[dict]:
    """The request bodies the OpenAI judge sends for ``items`` (answered with a fixed 'yes')."""
    judge = OpenAIJudge("http://127.0.0.1:9/v1", model="m", health_check=False, concurrency=1)
    bodies = []

    def post(body):
        bodies.append(body)
        top = [{"token": "yes", "logprob": -0.1}, {"token": "no", "logprob": -2.3}]
        return {"choices": [{"logprobs": {"content": [{"top_logprobs": top}]}}]}

    monkeypatch.setattr(judge, "_post", post)
    judge.yes_prob(items)
    judge.close()
    return bodies


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def local(request):
    """A tiny random judge of each family carrying that family's published chat template."""
    model, processor = build_tiny_vlm(request.param, seed=0)
    template = (TEMPLATES / PUBLISHED[request.param]).read_text()
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    judge = TransformersJudge(
        model=model, processor=processor, shared_prefix="none", progress=False
    )
    return judge, template


def test_the_openai_request_holds_the_image_and_one_text_part(monkeypatch):
    item = _items()[1]
    (body,) = _openai_requests([item], monkeypatch)
    (message,) = body["messages"]
    image_part, text_part = message["content"]
    assert message["role"] == "user" and image_part["type"] == "image_url"
    assert text_part == {"type": "text", "text": f"{CONTEXT}\nIs there exactly one cat?"}
    assert text_part["text"] == judge_text(item.context, item.question)


def test_openai_request_through_the_published_template_is_what_the_local_judge_scores(
    local, monkeypatch
):
    judge, template = local
    items = _items()
    scored = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        scored.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))

    handle = judge.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        judge.yes_prob(items)
    finally:
        handle.remove()
    assert len(scored) == len(items)

    processor = judge.processor
    for item, body, local_ids in zip(items, _openai_requests(items, monkeypatch), scored):
        text = processor.tokenizer.apply_chat_template(
            body["messages"], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        # The local shared-prefix modes split exactly this text into prefix and suffix.
        assert text == judge.scorer.prompt.full_text(item.context, item.question)
        image = decode_data_url(body["messages"][0]["content"][0]["image_url"]["url"])
        served = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0]
        assert served.tolist() == local_ids


def test_two_text_parts_would_have_scored_other_tokens(local):
    """Why one part: the templates join parts with nothing in between, so the old request
    (context and question as two parts) read '...sofa.Is the cat...'."""
    judge, template = local
    item = _items()[0]
    split = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
        {"type": "text", "text": item.context},
        {"type": "text", "text": item.question},
    ]
    text = judge.processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": split}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "sofa.Is the cat" in text
    assert text != judge.scorer.prompt.full_text(item.context, item.question)


def test_chat_prompt_splits_the_published_templates(local):
    judge, _ = local
    prompt = ChatPrompt(judge.processor)
    full = prompt.full_text(CONTEXT, QUESTIONS[0])
    assert full.count("<|image_pad|>") == 1 and f"{CONTEXT}\n{QUESTIONS[0]}<|im_end|>" in full
    ids = judge.processor.tokenizer(full, add_special_tokens=False)["input_ids"]
    prefix = judge.processor.tokenizer(prompt.prefix_text(CONTEXT), add_special_tokens=False)
    assert ids == prefix["input_ids"] + prompt.suffix_ids(QUESTIONS[0])
