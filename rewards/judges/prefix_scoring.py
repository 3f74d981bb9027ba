"""Next-token logits for judge prompts, with the image + context prefix computed once per image.

A judge prompt is one chat turn: ``[image] context \\n question`` followed by the start of the
assistant turn. Everything up to and including the context is the same for every question asked
about one image, so it is split off as the *prefix*; the question and the template's closing tokens
form the *suffix*. Three ways to get the logits of the token after each prompt:

- ``none``: one forward per (image, question) over the whole prompt (the vision tower runs for
  every question), positions computed by the model: the reference.
- ``kv_cache``: one forward over each prefix (vision tower included) keeps its key/value cache;
  the questions then run as a batch against that cache, each row pointing at its image's prefix.
  The cache is copied once per question (gathered straight into buffers with room for the
  question's tokens, :class:`GatheredLayer`), so its size is estimated first
  (:func:`kv_cache_bytes`); a chunk that would not fit is scored in mode ``packed`` (with a log
  line) or refused.
- ``packed``: one sequence per image, the prefix followed by all its questions back to back. A
  block attention mask lets each question see the prefix and itself only, and each question's
  positions restart where the prefix ends, so every question sees exactly what it would alone.
  The mask is a 4D tensor, which flash attention kernels would read as a padding mask: the text
  model must use ``sdpa`` or ``eager`` attention (:func:`check_packed_attention`).

Host work is done once where it can be: each distinct image is preprocessed once per call (on
the device, see :mod:`rewards.judges.image_prep`), the text before the image token once per
judge, each question's suffix once per distinct question and the packed layout of a rubric set
once per set (:class:`QuestionLayout`). :meth:`PrefixScorer.prepare` does everything before the
forward and :meth:`PrefixScorer.run` the forward, so a caller can prepare the next chunk while
the current one runs; on CUDA the preparation runs on its own stream and host tensors travel
through pinned memory.

The Qwen-VL models use multimodal RoPE: image tokens get (t, h, w) positions and text after the
image continues from the largest position used so far, ``max + 1``. The prefix positions are
computed on the host by :func:`mrope_prefix_positions` (tested equal to the model's own
``get_rope_index``, which loops over rows and reads the device for each); a question token ``j``
after a prefix whose next position is ``p`` sits at ``p + j`` in all three sections. Position
ids are passed as ``[3, B, L]``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
import torch
from PIL import Image
from transformers import DynamicCache, PreTrainedModel, ProcessorMixin
from transformers.cache_utils import DynamicLayer

from rewards.judges.base import judge_text
from rewards.judges.image_prep import DeviceImageProcessor

log = logging.getLogger(__name__)

SHARED_PREFIX_MODES = ("none", "kv_cache", "packed")
IMAGE_PREPROCESSING = ("device", "processor")
KV_CACHE_FALLBACKS = ("packed", "raise")
PACKED_TEXT_ATTENTION = ("sdpa", "eager")  # kernels that apply a 4D additive mask as given
_MAX_CACHED_QUESTIONS = 4096

# Sentinels rendered through the chat template to find where context and question go.
_CONTEXT_MARK = "\x00CONTEXT\x00"
_QUESTION_MARK = "\x00QUESTION\x00"


@dataclass
class PrefixGroup:
    """One image (uint8 ``[3, H, W]``) + context and the questions asked about it
    (``item_indices`` into the batch)."""

    image: torch.Tensor
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
        self.image_token = processor.image_token
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        if self._head.count(self.image_token) != 1:
            raise ValueError("the processor's chat template does not render the image token once")
        self._before_image = processor.tokenizer(
            self._head.split(self.image_token)[0], add_special_tokens=False
        )["input_ids"]
        self._suffix_cache: dict[str, list[int]] = {}
        self._check_split_tokenization()

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
        """Token ids of the question's suffix, tokenized once per distinct question."""
        ids = self._suffix_cache.get(question)
        if ids is None:
            if len(self._suffix_cache) >= _MAX_CACHED_QUESTIONS:
                self._suffix_cache.clear()
            ids = self.processor.tokenizer(self.suffix_text(question), add_special_tokens=False)[
                "input_ids"
            ]
            self._suffix_cache[question] = ids
        return ids

    def prefix_ids(
        self, contexts: Sequence[str], num_image_tokens: Sequence[int]
    ) -> list[list[int]]:
        """Token ids of each prefix with its image token expanded ``num_image_tokens`` times.

        The text before the image token is tokenized once; the text after it (template, context)
        in one batched call. The image token is special, so the pieces tokenize as the whole
        prompt does (checked at construction).
        """
        after = [self.prefix_text(c).split(self.image_token, 1)[1] for c in contexts]
        encoded = self.processor.tokenizer(after, add_special_tokens=False)["input_ids"]
        return [
            self._before_image + [self.image_token_id] * n + ids
            for n, ids in zip(num_image_tokens, encoded)
        ]

    @property
    def tokens_before_image(self) -> int:
        """How many tokens precede the image token in every prompt."""
        return len(self._before_image)

    def _check_split_tokenization(self) -> None:
        tokenizer = self.processor.tokenizer
        text = self.prefix_text("A check.").replace(self.image_token, self.image_token * 3)
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.prefix_ids(["A check."], [3])[0] != whole:
            raise ValueError(
                "the chat template's text around the image token does not tokenize in pieces as "
                "it does whole; shared-prefix scoring cannot split it"
            )


class ImageEncoder:
    """Each distinct image through the image processor once per call, on the judge's device.

    ``mode="device"`` computes the PIL processor's pixels from uint8 tensors on the device
    (:mod:`rewards.judges.image_prep`); ``"processor"`` runs the processor itself on PIL images.
    """

    def __init__(self, image_processor, mode: str = "device") -> None:
        if mode not in IMAGE_PREPROCESSING:
            raise ValueError(
                f"image_preprocessing must be one of {IMAGE_PREPROCESSING}, got {mode!r}"
            )
        self.image_processor = image_processor
        self.device_processor = DeviceImageProcessor(image_processor) if mode == "device" else None
        self.merge_size = int(image_processor.merge_size)

    def __call__(self, images: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values on device, image_grid_thw on CPU)`` for uint8 ``[3, H, W]`` images."""
        if self.device_processor is not None:
            on_device = [_to_device(image, device) for image in images]
            return self.device_processor(on_device)
        pil = [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]
        out = self.image_processor(images=pil, return_tensors="pt")
        return _to_device(out["pixel_values"], device), out["image_grid_thw"]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory without
    blocking (the caller orders the copy with a stream event)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass(frozen=True)
class QuestionLayout:
    """The questions of one rubric set tokenized once and laid out back to back.

    ``ids``, ``offset`` (position after the prefix), ``block`` (k + 1 for question k) and
    ``last`` (True at each question's last token, where its answer is read) have one entry per
    token.
    """

    ids: torch.Tensor
    offset: torch.Tensor
    block: torch.Tensor
    last: torch.Tensor

    @staticmethod
    def build(suffixes: Sequence[Sequence[int]]) -> QuestionLayout:
        ids = torch.tensor([t for s in suffixes for t in s], dtype=torch.long)
        offset = torch.cat([torch.arange(len(s)) for s in suffixes])
        block = torch.cat([torch.full((len(s),), k + 1) for k, s in enumerate(suffixes)])
        last = torch.zeros(len(ids), dtype=torch.bool)
        last[torch.tensor([len(s) for s in suffixes]).cumsum(0) - 1] = True
        return QuestionLayout(ids, offset, block, last)


@dataclass
class Prepared:
    """A chunk's model inputs, built on the host and moved (or computed) on the device.

    ``inputs`` go to the prefix (or only) forward; ``extra`` holds what the mode needs after it;
    ``item_indices`` (CPU) are the items whose logits come out, in order. ``ready`` is the CUDA
    event after which the tensors may be read on another stream.
    """

    mode: str
    inputs: dict[str, torch.Tensor]
    item_indices: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    ready: torch.cuda.Event | None = None


class PrefixScorer:
    """Builds each chunk's inputs (``prepare``, host work plus device preprocessing) and runs the
    model on them (``run``); the two are separate so the next chunk can be prepared while the
    current one runs.

    Args:
        model: a Qwen-VL family model (multimodal RoPE, the Qwen2-VL image processor's
            patches and one image token), in every mode.
        processor: its processor.
        device: where the model runs.
        image_preprocessing: ``"device"`` or ``"processor"`` (see :class:`ImageEncoder`).
        kv_cache_memory_gb: memory the repeated prefix cache of mode ``kv_cache`` may take;
            ``None``: the free memory of the device (CUDA) or half the available RAM (CPU).
        kv_cache_fallback: ``"packed"`` (score a chunk that would exceed it in mode packed, with
            a log line) or ``"raise"`` (a :class:`MemoryError` with the numbers).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        device: torch.device,
        image_preprocessing: str = "device",
        kv_cache_memory_gb: float | None = None,
        kv_cache_fallback: str = "packed",
    ) -> None:
        if kv_cache_fallback not in KV_CACHE_FALLBACKS:
            raise ValueError(
                f"kv_cache_fallback must be one of {KV_CACHE_FALLBACKS}, got {kv_cache_fallback!r}"
            )
        self.model = model
        self.device = device
        self.prompt = ChatPrompt(processor)
        self.images = ImageEncoder(processor.image_processor, image_preprocessing)
        self.pad_id = processor.tokenizer.pad_token_id
        self.kv_cache_memory_gb = kv_cache_memory_gb
        self.kv_cache_fallback = kv_cache_fallback
        self._layouts: dict[tuple[str, ...], QuestionLayout] = {}
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    # ------------------------------------------------------------------ host side
    def layout(self, questions: Sequence[str]) -> QuestionLayout:
        """The packed layout of ``questions``, built once per rubric set."""
        key = tuple(questions)
        if key not in self._layouts:
            if len(self._layouts) >= _MAX_CACHED_QUESTIONS:
                self._layouts.clear()
            self._layouts[key] = QuestionLayout.build([self.prompt.suffix_ids(q) for q in key])
        return self._layouts[key]

    def prepare(self, mode: str, groups: Sequence[PrefixGroup]) -> Prepared:
        """Everything before the forward for ``groups`` in ``mode``; on CUDA on its own stream."""
        if mode not in SHARED_PREFIX_MODES:
            raise ValueError(
                f"unknown shared_prefix mode {mode!r}; expected one of {SHARED_PREFIX_MODES}"
            )
        if self.stream is None:
            return self._prepare(mode, groups)
        with torch.cuda.stream(self.stream):
            prepared = self._prepare(mode, groups)
            prepared.ready = torch.cuda.Event()
            prepared.ready.record(self.stream)
        return prepared

    def _prepare(self, mode: str, groups: Sequence[PrefixGroup]) -> Prepared:
        if mode == "none":
            return self._prepare_none(groups)
        if mode == "kv_cache":
            return self._prepare_kv_cache(groups)
        return self._prepare_packed(groups)

    def _encoded_prefixes(
        self, groups: Sequence[PrefixGroup]
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Each group's image as patches on the device, its grid, and its prefix's token ids."""
        pixel_values, grids = self.images([g.image for g in groups], self.device)
        counts = (grids.prod(dim=1) // self.images.merge_size**2).tolist()
        return pixel_values, grids, self.prompt.prefix_ids([g.context for g in groups], counts)

    def _token_inputs(self, rows: list[list[int]], grids: torch.Tensor) -> dict:
        """Token rows left padded, with their mask, image-token types and image grids."""
        ids, mask = _left_pad(rows, self.pad_id)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "mm_token_type_ids": (ids == self.prompt.image_token_id).to(torch.int32),
            "image_grid_thw": grids,
        }

    def _prefix(self, groups: Sequence[PrefixGroup]) -> dict:
        """Image + context prefixes, left padded: ids, mask, pixels, grids, M-RoPE positions."""
        pixel_values, grids, rows = self._encoded_prefixes(groups)
        out = self._token_inputs(rows, grids)
        out["position_ids"], out["next_position"] = mrope_prefix_positions(
            [len(r) for r in rows],
            self.prompt.tokens_before_image,
            grids,
            self.images.merge_size,
            out["input_ids"].shape[1],
        )
        out = {k: _to_device(v, self.device) for k, v in out.items()}
        out["pixel_values"] = pixel_values
        return out

    def _prepare_none(self, groups: Sequence[PrefixGroup]) -> Prepared:
        pixel_values, grids, prefixes = self._encoded_prefixes(groups)
        rows, patch_rows, grid_rows = [], [], []
        starts = [0] + grids.prod(dim=1).cumsum(0).tolist()
        for b, g in enumerate(groups):
            for q in g.questions:
                rows.append(prefixes[b] + self.prompt.suffix_ids(q))
                patch_rows.append(torch.arange(starts[b], starts[b + 1]))
                grid_rows.append(b)
        host = self._token_inputs(rows, grids[grid_rows])
        inputs = {k: _to_device(v, self.device) for k, v in host.items()}
        inputs["pixel_values"] = pixel_values[_to_device(torch.cat(patch_rows), self.device)]
        return Prepared("none", inputs, _item_indices(groups))

    def _prepare_kv_cache(self, groups: Sequence[PrefixGroup]) -> Prepared:
        prefix = self._prefix(groups)
        questions = sum(len(g.questions) for g in groups)
        suffixes = [self.prompt.suffix_ids(q) for g in groups for q in g.questions]
        ids, mask = _left_pad(suffixes, self.pad_id)
        needed = kv_cache_bytes(
            self.model, prefix["input_ids"].shape[1], len(groups), questions, ids.shape[1]
        )
        budget = self._kv_cache_budget()
        if needed > budget:
            message = (
                f"kv_cache would hold {needed / 2**30:.2f} GB of prefix cache ({len(groups)} "
                f"prefixes of {prefix['input_ids'].shape[1]} tokens, copied for {questions} "
                f"questions) but {budget / 2**30:.2f} GB are available"
            )
            if self.kv_cache_fallback == "raise":
                raise MemoryError(message + " (kv_cache_fallback='raise')")
            log.warning("%s: scoring these %d images in mode packed", message, len(groups))
            return self._prepare_packed(groups, prefix)
        # Question token j (of n) sits at next_position + j; left padding shifts it right.
        pads = ids.shape[1] - mask.sum(1)
        offset = (torch.arange(ids.shape[1])[None] - pads[:, None]).clamp(min=0)
        rows = torch.tensor([b for b, g in enumerate(groups) for _ in g.questions])
        extra = {"input_ids": ids, "attention_mask": mask, "offset": offset, "rows": rows}
        extra = {k: _to_device(v, self.device) for k, v in extra.items()}
        return Prepared("kv_cache", prefix, _item_indices(groups), extra)

    def _prepare_packed(
        self, groups: Sequence[PrefixGroup], prefix: dict | None = None
    ) -> Prepared:
        prefix = prefix if prefix is not None else self._prefix(groups)
        layouts = [self.layout(g.questions) for g in groups]
        width = max(len(lay.ids) for lay in layouts)
        n_rows, prefix_len = prefix["input_ids"].shape
        q_ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        q_offset = torch.zeros((n_rows, width), dtype=torch.long)
        q_block = torch.full((n_rows, width), -1, dtype=torch.long)
        # True where an answer is read: each question's last token, row by row in question order,
        # which is the order of the items (and of the model's output for a boolean mask).
        read = torch.zeros((n_rows, prefix_len + width), dtype=torch.bool)
        for b, lay in enumerate(layouts):
            n = len(lay.ids)
            q_ids[b, :n], q_offset[b, :n], q_block[b, :n] = lay.ids, lay.offset, lay.block
            read[b, prefix_len : prefix_len + n] = lay.last
        q = {"ids": q_ids, "offset": q_offset, "block": q_block, "read": read}
        q = {k: _to_device(v, self.device) for k, v in q.items()}
        q_pos = (prefix["next_position"][:, None] + q["offset"]).masked_fill(q["block"] < 0, 0)
        block = torch.cat([prefix["attention_mask"].long() - 1, q["block"]], dim=1)
        inputs = {
            "input_ids": torch.cat([prefix["input_ids"], q["ids"]], dim=1),
            # sdpa takes a boolean mask (4x smaller); eager adds a float one to its scores
            "attention_mask": block_attention_mask(
                block, None if text_attention(self.model) == "sdpa" else self.model.dtype
            ),
            "position_ids": torch.cat(
                [prefix["position_ids"], q_pos[None].expand(3, -1, -1)], dim=2
            ),
            "pixel_values": prefix["pixel_values"],
            "image_grid_thw": prefix["image_grid_thw"],
        }
        return Prepared("packed", inputs, _item_indices(groups), {"read": q["read"]})

    def _kv_cache_budget(self) -> float:
        if self.kv_cache_memory_gb is not None:
            return self.kv_cache_memory_gb * 2**30
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            reserved = torch.cuda.memory_reserved(self.device)
            return free + reserved - torch.cuda.memory_allocated(self.device)
        return psutil.virtual_memory().available / 2

    # ------------------------------------------------------------------ device side
    @torch.no_grad()
    def run(self, prepared: Prepared) -> torch.Tensor:
        """Next-token logits ``[Q, V]`` (float32, on the device) of a prepared chunk."""
        if prepared.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(prepared.ready)
            for tensor in [*prepared.inputs.values(), *prepared.extra.values()]:
                tensor.record_stream(stream)
        model, inputs = self.model, prepared.inputs
        if prepared.mode == "none":
            return model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        if prepared.mode == "kv_cache":
            return self._run_kv_cache(inputs, prepared.extra)
        check_packed_attention(model)
        # Only the answer positions (the boolean mask picks them row by row, in item order) go
        # through the output projection; no cache, as nothing reuses the keys (it would copy
        # every layer's keys and values of the whole batch, then free them). The decoder is
        # called directly because a boolean ``logits_to_keep`` needs transformers >= 5.2x, and
        # vLLM's CPU wheel pins an older one.
        hidden = model.model(**inputs, use_cache=False).last_hidden_state
        return model.get_output_embeddings()(hidden[prepared.extra["read"]]).float()

    def _run_kv_cache(self, prefix: dict, questions: dict) -> torch.Tensor:
        model = self.model
        next_position = prefix["next_position"]
        inputs = {k: v for k, v in prefix.items() if k != "next_position"}
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        rows = questions["rows"]
        cache_arg = cache_argument(model)
        cache = repeated_cache(
            getattr(out, cache_arg), rows, model.config, room=questions["input_ids"].shape[1]
        )
        text_pos = next_position[rows][:, None] + questions["offset"]
        text_pos = text_pos.masked_fill(questions["attention_mask"] == 0, 0)
        attention_mask = torch.cat(
            [prefix["attention_mask"][rows], questions["attention_mask"]], dim=1
        )
        logits = model(
            input_ids=questions["input_ids"],
            attention_mask=attention_mask,
            position_ids=text_pos[None].expand(3, -1, -1),
            logits_to_keep=1,
            **{cache_arg: cache},
        ).logits
        return logits[:, -1].float()


def _item_indices(groups: Sequence[PrefixGroup]) -> torch.Tensor:
    return torch.tensor([i for g in groups for i in g.item_indices], dtype=torch.long)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to one length: ``(ids [N, L], mask [N, L])`` on the CPU.

    One write for all rows (the mask's True entries, row by row, are the tokens in order), not
    one per row: mode kv_cache pads a row per question.
    """
    lengths = torch.tensor([len(r) for r in rows])
    length = int(lengths.max())
    mask = torch.arange(length) >= (length - lengths)[:, None]
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    return ids, mask.long()


def mrope_prefix_positions(
    lengths: Sequence[int], before: int, grids: torch.Tensor, merge: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions ``[3, B, width]`` of left-padded one-image prefixes, and each row's next
    position ``[B]``, computed on the host (no device round trip per row).

    Row ``b`` holds ``lengths[b]`` tokens: ``before`` text tokens (positions 0..before-1 in all
    three sections), the image tokens of grid ``(1, h, w)`` merged ``merge x merge`` (temporal
    ``before``, height ``before + row``, width ``before + column``), then text continuing at
    ``before + max(h, w) / merge``, as the model's ``get_rope_index`` places them. Pads get 0.
    """
    positions = torch.zeros((3, len(lengths), width), dtype=torch.long)
    next_position = torch.zeros(len(lengths), dtype=torch.long)
    for b, (length, (_, grid_h, grid_w)) in enumerate(zip(lengths, grids.tolist())):
        rows, cols = grid_h // merge, grid_w // merge
        start = width - length
        positions[:, b, start : start + before] = torch.arange(before)
        image = slice(start + before, start + before + rows * cols)
        positions[0, b, image] = before
        positions[1, b, image] = (before + torch.arange(rows)).repeat_interleave(cols)
        positions[2, b, image] = (before + torch.arange(cols)).repeat(rows)
        text_start = before + max(rows, cols)
        n_text = length - before - rows * cols
        positions[:, b, image.stop :] = text_start + torch.arange(n_text)
        next_position[b] = text_start + n_text
    return positions, next_position


def block_attention_mask(block: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``[B, 1, L, L]`` mask from block ids (-1 pad, 0 prefix, k + 1 question k): boolean (True =
    attend) when ``dtype`` is None, else additive in ``dtype``.

    A token sees the earlier tokens of its own block and the whole prefix; pads see themselves.
    """
    length = block.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=block.device).tril()
    same_block = block[:, :, None] == block[:, None, :]
    sees_prefix = (block[:, None, :] == 0) & (block[:, :, None] >= 0)
    allowed = causal[None] & (same_block | sees_prefix) & (block[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=block.device)[None]
    if dtype is None:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=block.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def text_attention(model: PreTrainedModel) -> str:
    """The attention implementation of the model's text decoder."""
    return model.config.get_text_config()._attn_implementation


def check_packed_attention(model: PreTrainedModel) -> None:
    """Refuse text attention kernels that would misread packed mode's 4D block mask."""
    impl = text_attention(model)
    if impl not in PACKED_TEXT_ATTENTION:
        raise ValueError(
            f"shared_prefix='packed' passes a 4D block attention mask, which text attention "
            f"{impl!r} does not apply (flash attention reads a mask as padding only, so every "
            f"question would see the other questions); use attn_implementation "
            f"{' or '.join(map(repr, PACKED_TEXT_ATTENTION))} for the text model "
            f"(vision_attn_implementation may stay {impl!r}), or shared_prefix='kv_cache'"
        )


def cache_argument(model: PreTrainedModel) -> str:
    """The name of a model's cache, as its forward's argument and output field: ``cache`` in
    recent transformers, ``past_key_values`` in those before (such as the one vLLM's CPU wheel
    pins), so the judge runs beside either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_cache_bytes(
    model: PreTrainedModel,
    prefix_len: int,
    n_prefixes: int,
    n_questions: int,
    question_len: int = 0,
) -> int:
    """Bytes of mode kv_cache's caches: one per prefix, plus one copy per question with room for
    its ``question_len`` (padded) tokens."""
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim
    tokens = prefix_len * n_prefixes + (prefix_len + question_len) * n_questions
    return per_token * model.dtype.itemsize * tokens


def repeated_cache(cache, rows: torch.Tensor, config, room: int = 0) -> DynamicCache:
    """A cache whose row ``i`` is row ``rows[i]`` of ``cache`` (a copy per question), with room
    for ``room`` more tokens per layer (see :class:`GatheredLayer`)."""
    repeated = DynamicCache(config=config)
    for index, (keys, values, *_) in enumerate(cache):
        layer = repeated.layers[index]
        if type(layer) is DynamicLayer:
            repeated.layers[index] = GatheredLayer(keys, values, rows, room)
        else:  # a layer type with its own update rule (e.g. a sliding window): copied through it
            layer.update(keys[rows], values[rows])
    return repeated


class GatheredLayer(DynamicLayer):
    """A full-attention cache layer whose row ``i`` is row ``rows[i]`` of a prefix cache layer,
    gathered once into a buffer with ``room`` more positions.

    The next update writes its keys and values into that room, where a :class:`DynamicLayer`
    would concatenate (allocating and copying every row again); once the room is full the keys
    are the whole buffer, the tensor concatenation would have given. Without room (or past it) it
    concatenates as a :class:`DynamicLayer` does, and so it does once its keys no longer view the
    buffer (rows selected or repeated after the gather).
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, room: int
    ) -> None:
        super().__init__()
        self.keys, self._key_buffer = _gather_rows(keys, rows, room)
        self.values, self._value_buffer = _gather_rows(values, rows, room)
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        fits = end <= self._key_buffer.shape[-2]
        if not fits or self.keys.data_ptr() != self._key_buffer.data_ptr():
            return super().update(key_states, value_states, *args, **kwargs)
        self._key_buffer[..., start:end, :] = key_states
        self._value_buffer[..., start:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values


def _gather_rows(
    states: torch.Tensor, rows: torch.Tensor, room: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states[rows], buffer)``: the first a view of the second, which has ``room`` more
    positions along dimension -2; the rows are gathered straight into the buffer."""
    *_, length, dim = states.shape
    buffer = states.new_empty((len(rows), *states.shape[1:-2], length + room, dim))
    gathered = buffer[..., :length, :]
    torch.index_select(states, 0, rows, out=gathered)
    return gathered, buffer


def check_shared_prefix_support(model: PreTrainedModel) -> None:
    """Raise unless ``model`` exposes the M-RoPE position function the shared modes rely on."""
    if not hasattr(getattr(model, "model", None), "get_rope_index"):
        raise ValueError(
            f"shared-prefix scoring needs a multimodal-RoPE (Qwen-VL family) model; "
            f"{type(model).__name__} has no model.get_rope_index: use shared_prefix='none'"
        )
