"""Next-token logits for judge prompts, with the image + context prefix computed once per image.

A judge prompt is one chat turn: ``[image] context \\n question`` followed by the start of the
assistant turn. Everything up to and including the context is the same for every question asked
about one image, so it is split off as the *prefix*; the question and the template's closing tokens
form the *suffix*. Three ways to get the logits of the token after each prompt:

- ``none``: one forward per (image, question) over the whole prompt (the vision tower runs for
  every question), the reference.
- ``kv_cache``: one forward over each prefix (vision tower included) keeps its key/value cache;
  the questions then run as a batch against that cache, each row pointing at its image's prefix.
- ``packed``: one sequence per image, the prefix followed by all its questions back to back. A
  block attention mask lets each question see the prefix and itself only, and each question's
  positions restart where the prefix ends, so every question sees exactly what it would alone.

In every mode each image goes through the image processor once (CPU work that a GPU run would
otherwise repeat per question), so the modes differ only in what the model computes.

The Qwen-VL models use multimodal RoPE: image tokens get (t, h, w) positions and text after the
image continues from the largest position used so far, ``max + 1``. The prefix positions come from
the model's own ``get_rope_index``; a question token ``j`` after a prefix whose next position is
``p`` sits at ``p + j`` in all three sections. Position ids are passed as ``[3, B, L]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import DynamicCache, PreTrainedModel, ProcessorMixin

from rewards.judges.base import judge_text

SHARED_PREFIX_MODES = ("none", "kv_cache", "packed")

# Sentinels rendered through the chat template to find where context and question go.
_CONTEXT_MARK = "\x00CONTEXT\x00"
_QUESTION_MARK = "\x00QUESTION\x00"


@dataclass
class PrefixGroup:
    """One image + context and the questions asked about it (``item_indices`` into the batch)."""

    image: Image.Image
    context: str
    questions: list[str] = field(default_factory=list)
    item_indices: list[int] = field(default_factory=list)


class ChatPrompt:
    """The judge prompt, rendered with the processor's chat template and split at the question.

    ``prefix_text(context) + suffix_text(question)`` is exactly the text the chat template renders
    for a user turn holding the image and ``context + "\\n" + question``, followed by the
    assistant turn start.
    """

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor
        messages = [self.user_turn(_CONTEXT_MARK, _QUESTION_MARK, [None])]
        rendered = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_CONTEXT_MARK) != 1 or rendered.count(_QUESTION_MARK) != 1:
            raise ValueError("the processor's chat template does not render the user text once")
        self._head, rest = rendered.split(_CONTEXT_MARK)
        self._joint, self._tail = rest.split(_QUESTION_MARK)

    @staticmethod
    def user_turn(context: str, question: str, images: Sequence) -> dict:
        """One user message: the images, then :func:`judge_text` (context and question, stripped,
        on separate lines), the text every backend sends.

        The prompt then splits at a newline followed by a non-space, where Qwen-style
        pre-tokenizers always cut, so prefix + suffix tokenize as the whole does.
        """
        return ChatPrompt.user_message(judge_text(context, question), images)

    @staticmethod
    def user_message(text: str, images: Sequence) -> dict:
        """One user message: the images, then ``text`` exactly as given (free-text requests such
        as a benchmark's official judge prompt go out verbatim, as the OpenAI client sends them)."""
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        return {"role": "user", "content": content}

    def prefix_text(self, context: str) -> str:
        context = context.strip()
        return f"{self._head}{context}{self._joint}" if context else self._head

    def suffix_text(self, question: str) -> str:
        return f"{question.strip()}{self._tail}"

    def full_text(self, context: str, question: str) -> str:
        return self.prefix_text(context) + self.suffix_text(question)

    def suffix_ids(self, question: str) -> list[int]:
        return self.processor.tokenizer(self.suffix_text(question), add_special_tokens=False)[
            "input_ids"
        ]


@dataclass
class EncodedImage:
    """One image through the processor's image processor: patches, grid and placeholder text."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    placeholder: str  # the image token repeated once per image token the model will see


def encode_images(processor: ProcessorMixin, groups: Sequence[PrefixGroup]) -> list[EncodedImage]:
    """Each group's image preprocessed once, however many questions are asked about it."""
    encoded = []
    for g in groups:
        out = processor.image_processor(images=[g.image], return_tensors="pt")
        placeholder = processor.replace_image_token(out, image_idx=0)
        encoded.append(EncodedImage(out["pixel_values"], out["image_grid_thw"], placeholder))
    return encoded


def _model_inputs(
    processor: ProcessorMixin, images: Sequence[EncodedImage], texts: Sequence[str], device
) -> dict[str, torch.Tensor]:
    """What ``processor(images=..., text=texts)`` returns (left padded), from encoded images.

    Each text holds one image token, expanded here to the image's placeholder; this is the
    processor's own expansion, done without preprocessing an image again for every question.
    """
    expanded = [t.replace(processor.image_token, im.placeholder, 1) for t, im in zip(texts, images)]
    enc = processor.tokenizer(
        expanded,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        return_token_type_ids=False,
    )
    types = processor.create_mm_token_type_ids(enc["input_ids"].tolist())
    enc["mm_token_type_ids"] = torch.tensor(types)
    enc["pixel_values"] = torch.cat([im.pixel_values for im in images])
    enc["image_grid_thw"] = torch.cat([im.image_grid_thw for im in images])
    return {k: v.to(device) for k, v in enc.items()}


def _prefix_inputs(prompt: ChatPrompt, groups: Sequence[PrefixGroup], device) -> dict:
    """The image + context prefix of every group, left-padded into one batch."""
    texts = [prompt.prefix_text(g.context) for g in groups]
    return _model_inputs(prompt.processor, encode_images(prompt.processor, groups), texts, device)


def check_shared_prefix_support(model: PreTrainedModel) -> None:
    """Raise unless ``model`` exposes the M-RoPE position function the shared modes rely on."""
    if not hasattr(getattr(model, "model", None), "get_rope_index"):
        raise ValueError(
            f"shared-prefix scoring needs a multimodal-RoPE (Qwen-VL family) model; "
            f"{type(model).__name__} has no model.get_rope_index: use shared_prefix='none'"
        )


def _rope_index(model: PreTrainedModel, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids ``[3, B, L]`` of left-padded prefixes and each row's next position."""
    check_shared_prefix_support(model)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    valid = inputs["attention_mask"].bool()
    next_pos = positions.masked_fill(~valid[None], -1).amax(dim=(0, 2)) + 1
    return positions, next_pos


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Left-pad token id lists to one length: ``(ids [N, L], mask [N, L], lengths [N])``."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
    lengths = torch.tensor([len(r) for r in rows])
    return ids.to(device), mask.to(device), lengths.to(device)


@torch.no_grad()
def logits_one_per_question(
    model: PreTrainedModel, prompt: ChatPrompt, groups: Sequence[PrefixGroup], device
) -> torch.Tensor:
    """Reference: each (image, question) as its own full prompt, batched, positions by the model.

    Returns float32 logits ``[Q, V]`` for the questions of ``groups`` in order.
    """
    images, texts = [], []
    for g, encoded in zip(groups, encode_images(prompt.processor, groups)):
        for q in g.questions:
            images.append(encoded)
            texts.append(prompt.full_text(g.context, q))
    inputs = _model_inputs(prompt.processor, images, texts, device)
    return model(**inputs, logits_to_keep=1).logits[:, -1].float()


@torch.no_grad()
def logits_kv_cache(
    model: PreTrainedModel, prompt: ChatPrompt, groups: Sequence[PrefixGroup], device
) -> torch.Tensor:
    """Prefixes once (one batched forward), then all questions against the repeated cache."""
    prefix = _prefix_inputs(prompt, groups, device)
    positions, next_pos = _rope_index(model, prefix)
    out = model(**prefix, position_ids=positions, use_cache=True, logits_to_keep=1)
    rows = torch.tensor([b for b, g in enumerate(groups) for _ in g.questions], device=device)
    suffixes = [prompt.suffix_ids(q) for g in groups for q in g.questions]
    pad_id = prompt.processor.tokenizer.pad_token_id
    ids, mask, lengths = _left_pad(suffixes, pad_id, device)
    # Question token j (of n) sits at next_pos + j; left padding shifts the real tokens right.
    offset = torch.arange(ids.shape[1], device=device)[None] - (ids.shape[1] - lengths)[:, None]
    text_pos = (next_pos[rows][:, None] + offset.clamp(min=0)).masked_fill(mask == 0, 0)
    cache = DynamicCache(
        ddp_cache_data=[(keys[rows], values[rows]) for keys, values, *_ in out.cache],
        config=model.config,
    )
    attention_mask = torch.cat([prefix["attention_mask"][rows], mask], dim=1)
    logits = model(
        input_ids=ids,
        attention_mask=attention_mask,
        position_ids=text_pos[None].expand(3, -1, -1),
        cache=cache,
        logits_to_keep=1,
    ).logits
    return logits[:, -1].float()


@torch.no_grad()
def logits_packed(
    model: PreTrainedModel, prompt: ChatPrompt, groups: Sequence[PrefixGroup], device
) -> torch.Tensor:
    """Each image's prefix and all its questions in one sequence under a block attention mask."""
    prefix = _prefix_inputs(prompt, groups, device)
    prefix_pos, next_pos = _rope_index(model, prefix)
    n_rows, prefix_len = prefix["input_ids"].shape
    suffixes = [[prompt.suffix_ids(q) for q in g.questions] for g in groups]
    width = max(sum(len(s) for s in row) for row in suffixes)
    pad_id = prompt.processor.tokenizer.pad_token_id

    # The questions' part, built on CPU and moved once. block: -1 pad, 0 prefix, k + 1 question k.
    q_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    q_offset = torch.zeros((n_rows, width), dtype=torch.long)  # position after the prefix
    q_block = torch.full((n_rows, width), -1, dtype=torch.long)
    last_index = []  # (row, position of the question's last token), in question order
    for b, row in enumerate(suffixes):
        start = 0
        for k, suffix in enumerate(row):
            end = start + len(suffix)
            q_ids[b, start:end] = torch.tensor(suffix)
            q_offset[b, start:end] = torch.arange(len(suffix))
            q_block[b, start:end] = k + 1
            last_index.append((b, prefix_len + end - 1))
            start = end
    q_ids, q_offset, q_block = q_ids.to(device), q_offset.to(device), q_block.to(device)
    q_pos = (next_pos[:, None] + q_offset).masked_fill(q_block < 0, 0)
    ids = torch.cat([prefix["input_ids"], q_ids], dim=1)
    positions = torch.cat([prefix_pos, q_pos[None].expand(3, -1, -1)], dim=2)
    block = torch.cat([prefix["attention_mask"].long() - 1, q_block], dim=1)
    length = ids.shape[1]

    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    same_block = block[:, :, None] == block[:, None, :]
    sees_prefix = (block[:, None, :] == 0) & (block[:, :, None] >= 0)
    allowed = causal[None] & (same_block | sees_prefix) & (block[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=device)[None]  # pads see themselves
    dtype = model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    hidden = model.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        pixel_values=prefix["pixel_values"],
        image_grid_thw=prefix["image_grid_thw"],
    ).last_hidden_state
    rows, cols = torch.tensor(last_index, device=device).T
    picked = hidden[rows, cols]
    return model.get_output_embeddings()(picked).float()


SCORERS = {
    "none": logits_one_per_question,
    "kv_cache": logits_kv_cache,
    "packed": logits_packed,
}


def last_logits(
    model: PreTrainedModel,
    prompt: ChatPrompt,
    groups: Sequence[PrefixGroup],
    mode: str,
    device: torch.device | str,
) -> torch.Tensor:
    """Next-token logits ``[Q, V]`` (float32) for every question of ``groups``, in group order."""
    if mode not in SCORERS:
        raise ValueError(
            f"unknown shared_prefix mode {mode!r}; expected one of {SHARED_PREFIX_MODES}"
        )
    return SCORERS[mode](model, prompt, groups, device)
