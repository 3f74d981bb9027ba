"""A chat VLM run locally with transformers, used as a yes/no judge and for free text.

The model loads with ``AutoModelForImageTextToText`` and its processor with ``AutoProcessor``.
Yes/no scoring works with the Qwen2-VL / Qwen2.5-VL / Qwen3-VL family (their image processor,
image token and multimodal RoPE); the shared-prefix modes, which run the image + context prefix
once per image and score every question against it, refuse a model without ``get_rope_index``;
see :mod:`rewards.judges.prefix_scoring`. Tested with Qwen3-VL and Qwen2.5-VL.

P(yes) comes from the next-token distribution after the assistant turn starts: the probability mass
of every single-token spelling of "yes" ("yes", "Yes", " yes", "YES", ...) against that of "no",
normalised as p(yes) / (p(yes) + p(no)) by default, or the raw p(yes) mass; over the whole
vocabulary (``yes_no_from="full"``) or over the ``top_k`` most likely tokens only
(``"top_k"``), the rule the server and vLLM judges follow (:mod:`rewards.judges.base`).

Images may be PIL images or image tensors (uint8, or float in [0, 1]; ``[3, H, W]``, on any
device): each distinct image is converted and fingerprinted once per call and preprocessed on the
judge's device. The next chunk of images is prepared in a background thread while the current one
runs (``prefetch``); on CUDA its copies and preprocessing run on a stream of their own.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.utils import is_torchvision_available

from rewards.images import to_uint8_chw
from rewards.judges.base import (
    DEFAULT_TOP_K,
    NO_YES_NO_TOKEN,
    Judge,
    JudgeError,
    JudgeItem,
    JudgeResult,
    check_yes_no_from,
    config_fingerprint,
)
from rewards.judges.prefix_scoring import (
    SHARED_PREFIX_MODES,
    ChatPrompt,
    PrefixGroup,
    PrefixScorer,
    Prepared,
    check_packed_attention,
    check_shared_prefix_support,
)
from rewards.rubric_set import check_scoring

YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
_NO_YES_NO = -1.0  # probs_from_logits' mark for "no yes/no token among the top k"
NO_SPELLINGS = ("no", "No", "NO", " no", " No", " NO")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16`` (and so on)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


# The video processor class that goes with each Qwen-VL processor class.
VIDEO_PROCESSOR_CLASSES = {
    "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
    "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
}


def video_processor_settings(image_processor) -> dict[str, int]:
    """The patch/merge sizes a Qwen-VL video processor shares with the model's image processor."""
    return {
        "patch_size": image_processor.patch_size,
        "merge_size": image_processor.merge_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
    }


def build_processor(
    processor_cls: type[ProcessorMixin], image_processor, tokenizer, chat_template: str | None
) -> ProcessorMixin:
    """An instance of the real processor class ``processor_cls`` for image + text input.

    The Qwen-VL processors also hold a video processor, which transformers accepts only with
    torchvision installed. Without torchvision, a subclass of ``processor_cls`` that leaves the
    video processor out is returned: images and text go through the very same code.
    """
    if is_torchvision_available():
        video_cls = getattr(transformers, VIDEO_PROCESSOR_CLASSES[processor_cls.__name__])
        video = video_cls(**video_processor_settings(image_processor))
        return processor_cls(image_processor, tokenizer, video, chat_template=chat_template)
    image_only_cls = _image_only_processor_class(processor_cls)
    return image_only_cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )


def _image_only_processor_class(processor_cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return type(
        f"{processor_cls.__name__}ImageOnly",
        (processor_cls,),
        {"__init__": __init__, "real_processor_class": processor_cls.__name__},
    )


def pil_image_processor(path: str | Path):
    """The folder's image processor on transformers' PIL backend, whatever is installed.

    The official code preprocesses with PIL and NumPy (transformers 4.x image processors,
    qwen-vl-utils' ``fetch_image``, or torchvision transforms on PIL images); transformers 5 picks
    its torchvision backend when torchvision is installed, which resizes tensors and gives other
    pixels. Pinning the backend keeps the scores independent of whether torchvision is there.
    """
    return AutoImageProcessor.from_pretrained(str(path), backend="pil")


def load_processor(path: str | Path) -> ProcessorMixin:
    """``AutoProcessor.from_pretrained(path)`` with its image processor on the PIL backend
    (:func:`pil_image_processor`); without torchvision, the image-only equivalent."""
    path = Path(path)
    if is_torchvision_available():
        processor = AutoProcessor.from_pretrained(path)
        processor.image_processor = pil_image_processor(path)
        return processor
    config_file = path / "processor_config.json"
    if not config_file.exists():
        config_file = path / "preprocessor_config.json"
    name = (
        json.loads(config_file.read_text()).get("processor_class") if config_file.exists() else None
    )
    processor_cls = getattr(transformers, name, None) if name else None
    if processor_cls is None:
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = tokenizer.chat_template
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    elif (path / "chat_template.json").exists():
        template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    return build_processor(processor_cls, pil_image_processor(path), tokenizer, template)


def attention_implementations(text: str | None, vision: str | None) -> dict[str, str]:
    """The ``attn_implementation`` mapping for a Qwen-VL model: text decoder and vision tower set
    each on its own (an empty mapping when neither is given)."""
    if text is None and vision is None:
        return {}
    mapping = {"vision_config": vision or text}
    if text is not None:
        mapping |= {"": text, "text_config": text}
    return mapping


def yes_no_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Ids of the single-token spellings of "yes" and of "no" in this tokenizer's vocabulary."""

    def single_tokens(spellings: Sequence[str]) -> list[int]:
        ids = []
        for word in spellings:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(encoded[0])
        return ids

    yes, no = single_tokens(YES_SPELLINGS), single_tokens(NO_SPELLINGS)
    if not yes or not no:
        raise JudgeError(
            f"the tokenizer has no single-token spelling of {'yes' if not yes else 'no'} "
            f"(tried {YES_SPELLINGS if not yes else NO_SPELLINGS}); it cannot be a yes/no judge"
        )
    return yes, no


def group_items(items: Sequence[JudgeItem]) -> list[PrefixGroup]:
    """Items grouped by (image content, context), in order of first appearance.

    Each distinct image object is converted to uint8 ``[3, H, W]`` and fingerprinted once per
    call, however many questions are asked about it; equal images share one prefix even as
    different objects (a fingerprint match is confirmed pixel for pixel).
    """
    content_of: dict[int, int] = {}  # id(image object) -> index into contents
    contents: list[torch.Tensor] = []
    by_fingerprint: dict[tuple, list[int]] = {}
    groups: dict[tuple[int, str], PrefixGroup] = {}
    for i, item in enumerate(items):
        if id(item.image) not in content_of:
            try:
                pixels = to_uint8_chw(item.image)
            except (TypeError, ValueError) as err:
                raise TypeError(f"item {i}: {err}") from None
            content_of[id(item.image)] = _content_index(pixels, contents, by_fingerprint)
        content = content_of[id(item.image)]
        group = groups.get((content, item.context))
        if group is None:
            group = groups[(content, item.context)] = PrefixGroup(contents[content], item.context)
        group.questions.append(item.question)
        group.item_indices.append(i)
    return list(groups.values())


def _content_index(
    pixels: torch.Tensor, contents: list[torch.Tensor], by_fingerprint: dict[tuple, list[int]]
) -> int:
    """Index of ``pixels`` in ``contents`` (appended when new): a hash of a sample of the pixels
    (every ``max(1, side // 32)``-th row and column) finds candidates, ``torch.equal``
    decides."""
    height, width = pixels.shape[1:]
    sample = pixels[:, :: max(1, height // 32), :: max(1, width // 32)]
    digest = hashlib.blake2b(sample.cpu().numpy().tobytes(), digest_size=16).digest()
    key = (tuple(pixels.shape), str(pixels.device), digest)
    for index in by_fingerprint.get(key, []):
        if torch.equal(contents[index], pixels):
            return index
    contents.append(pixels)
    by_fingerprint.setdefault(key, []).append(len(contents) - 1)
    return len(contents) - 1


class TransformersJudge(Judge):
    """A local chat VLM answering yes/no questions about images (and writing free text).

    Args:
        model_path: local folder with the model and processor (``from_pretrained`` layout).
        model, processor: an already built model and processor instead of ``model_path``.
        device, dtype: where and in which precision the model runs ("float32", "bf16", ...).
        scoring: "normalized" = p(yes) / (p(yes) + p(no)); "raw" = p(yes) mass.
        yes_no_from, top_k: read the yes/no masses from the whole vocabulary ("full", the class
            default) or from the ``top_k`` most likely tokens ("top_k", as the server and vLLM
            judges must, and the default of the judge configs), where an answer with neither
            among them is NaN with reason ``"no yes/no token"``.
        shared_prefix: "none" (one forward per question), "kv_cache" or "packed"
            (see :mod:`rewards.judges.prefix_scoring`).
        batch_size: images per forward in the shared-prefix modes (with all their questions),
            (image, question) pairs per forward in mode "none".
        attn_implementation: attention of the text model ("sdpa", "eager", ...; ``None`` keeps
            the model's); mode "packed" needs "sdpa" or "eager".
        vision_attn_implementation: attention of the vision tower (e.g. "flash_attention_2");
            ``None``: the same as ``attn_implementation``.
        image_preprocessing: "device" (the PIL processor's pixels computed on ``device``, see
            :mod:`rewards.judges.image_prep`) or "processor" (the processor itself, on PIL images).
        prefetch: prepare the next chunk in a background thread while the current one runs.
        kv_cache_memory_gb, kv_cache_fallback: memory mode "kv_cache" may use for its copies of
            the prefix cache (``None``: what the device has free) and what happens to a chunk that
            would need more: "packed" (scored in mode packed, with a log line) or "raise".
        progress: show a progress bar over calls of four batches or more.
    """

    name = "transformers"
    accepts_tensors = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        model: PreTrainedModel | None = None,
        processor: ProcessorMixin | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        scoring: str = "normalized",
        shared_prefix: str = "packed",
        batch_size: int = 16,
        attn_implementation: str | None = None,
        vision_attn_implementation: str | None = None,
        image_preprocessing: str = "device",
        prefetch: bool = True,
        kv_cache_memory_gb: float | None = None,
        kv_cache_fallback: str = "packed",
        progress: bool = True,
        yes_no_from: str = "full",
        top_k: int = DEFAULT_TOP_K,
    ):
        check_scoring(scoring)
        self.top_k = check_yes_no_from(yes_no_from, top_k)
        self.yes_no_from = yes_no_from
        if shared_prefix not in SHARED_PREFIX_MODES:
            raise ValueError(
                f"unknown shared_prefix {shared_prefix!r}; expected one of {SHARED_PREFIX_MODES}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (model_path is None) == (model is None) or (model is None) != (processor is None):
            raise ValueError("give either model_path, or both model and processor")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.scoring = scoring
        self.shared_prefix = shared_prefix
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.progress = progress
        attention = attention_implementations(attn_implementation, vision_attn_implementation)
        if model_path is not None:
            model, processor = self._load(Path(model_path), attention)
        elif attention:
            model.set_attn_implementation(attention)
        if shared_prefix != "none":
            check_shared_prefix_support(model)
        if shared_prefix == "packed":
            check_packed_attention(model)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.scorer = PrefixScorer(
            self.model,
            processor,
            self.device,
            image_preprocessing=image_preprocessing,
            kv_cache_memory_gb=kv_cache_memory_gb,
            kv_cache_fallback=kv_cache_fallback,
        )
        self.yes_ids, self.no_ids = yes_no_token_ids(processor.tokenizer)
        self._on_device = True
        self._prep_pool: ThreadPoolExecutor | None = None

    def _load(
        self, path: Path, attention: dict[str, str]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        if not path.is_dir():
            raise FileNotFoundError(f"judge model folder not found: {path}")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"judge model folder {path} has no config.json")
        processor = load_processor(path)
        kwargs = {"attn_implementation": attention} if attention else {}
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype, **kwargs)
        return model, processor

    def _ready(self) -> None:
        if not self._on_device:
            self.model.to(self.device)
            self._on_device = True

    def release(self) -> None:
        """Move the weights to CPU and free the accelerator's cache; the next call moves back."""
        if self.device.type == "cpu":
            return
        self.model.to("cpu")
        self._on_device = False
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        if not items:
            return JudgeResult(torch.empty(0), [])
        self._ready()
        groups = group_items(items)
        if self.shared_prefix == "none":
            groups = [
                PrefixGroup(g.image, g.context, [q], [i])
                for g in groups
                for q, i in zip(g.questions, g.item_indices)
            ]
        chunks = [groups[s : s + self.batch_size] for s in range(0, len(groups), self.batch_size)]
        indices, answers = [], []
        show = self.progress and len(chunks) >= 4
        for prepared in tqdm(
            self._prepared(chunks), total=len(chunks), desc="judge", leave=False, disable=not show
        ):
            logits = self.scorer.run(prepared)
            indices.append(prepared.item_indices)
            answers.append(self.probs_from_logits(logits))
        probs = torch.full((len(items),), float("nan"))
        probs[torch.cat(indices)] = torch.cat(answers).cpu()  # the one wait for the device
        reasons = [
            NO_YES_NO_TOKEN if p == _NO_YES_NO else "non-finite judge logits" if p != p else None
            for p in probs.tolist()
        ]
        probs[probs == _NO_YES_NO] = float("nan")
        return JudgeResult(probs, reasons)

    def _prepared(self, chunks: list[list[PrefixGroup]]) -> Iterator[Prepared]:
        """Each chunk's prepared inputs; with ``prefetch``, chunk k + 1 is prepared in a
        background thread while the caller runs chunk k."""
        mode = self.shared_prefix
        if not self.prefetch or len(chunks) == 1:
            for chunk in chunks:
                yield self.scorer.prepare(mode, chunk)
            return
        if self._prep_pool is None:
            self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="judge-prepare")
        pending = self._prep_pool.submit(self.scorer.prepare, mode, chunks[0])
        try:
            for chunk in chunks[1:]:
                prepared = pending.result()
                pending = self._prep_pool.submit(self.scorer.prepare, mode, chunk)
                yield prepared
            yield pending.result()
        finally:
            pending.cancel()

    def probs_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """P(yes) from next-token logits ``[N, V]``, by this judge's scoring mode and P(yes)
        rule; under ``top_k``, a row with neither a yes nor a no among its top tokens is
        ``_NO_YES_NO`` (-1, made NaN with its reason by the caller, after the one device wait)."""
        log_probs = logits.float().log_softmax(dim=-1)
        if self.yes_no_from == "top_k":  # mass outside the top k tokens is not seen
            top = log_probs.topk(min(self.top_k, log_probs.shape[-1]), dim=-1)
            log_probs = torch.full_like(log_probs, -math.inf).scatter(-1, top.indices, top.values)
        log_yes = log_probs[:, self.yes_ids].logsumexp(dim=-1)
        log_no = log_probs[:, self.no_ids].logsumexp(dim=-1)
        probs = log_yes.exp() if self.scoring == "raw" else torch.sigmoid(log_yes - log_no)
        unseen = torch.isneginf(log_yes) & torch.isneginf(log_no)
        return torch.where(unseen, torch.full_like(probs, _NO_YES_NO), probs)

    def model_identity(self) -> tuple[str, str | None]:
        """The model folder's name and the fingerprint of its config."""
        config = self.model.config
        name = Path(str(getattr(config, "_name_or_path", "") or type(self.model).__name__)).name
        return name, config_fingerprint(config.to_dict())

    def generate(
        self,
        images: Sequence[Image.Image],
        text: str,
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> str:
        return self.generate_many(
            [(images, text)], max_new_tokens, temperature=temperature, system=system
        )[0]

    def eos_token_ids(self) -> list[int]:
        """The ids that end an answer: every one the model's generation config lists (Qwen2.5-VL
        stops at both ``<|im_end|>`` and ``<|endoftext|>``), as the official ``generate`` calls
        use them; the tokenizer's eos only when the generation config names none."""
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.processor.tokenizer.eos_token_id
        return [int(i) for i in ([ids] if isinstance(ids, int) else ids)]

    @torch.no_grad()
    def generate_many(
        self,
        requests: Sequence[tuple[Sequence[Image.Image], str]],
        max_new_tokens: int = 512,
        *,
        temperature: float = 0.0,
        system: str | None = None,
    ) -> list[str]:
        """Answers, ``batch_size`` conversations per ``generate`` call (left padded): greedy at
        temperature 0, sampled above it; ``system`` opens each conversation when given."""
        self._ready()
        answers: list[str] = []
        tokenizer = self.processor.tokenizer
        head = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature else {"do_sample": False}
        )
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            texts = [
                self.processor.apply_chat_template(
                    [*head, ChatPrompt.user_message(text, images)],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for images, text in chunk
            ]
            images = [im.convert("RGB") for ims, _ in chunk for im in ims]
            enc = self.processor(
                images=images or None,
                text=texts,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            ).to(self.device)
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                **sampling,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=self.eos_token_ids(),
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return answers
