"""A judge that runs vLLM's offline engine inside the training process.

The engine (``vllm.LLM``) loads a local checkpoint with prefix caching on, so the image + context
prefix that all rubric questions about one image share is computed once and reused. A
``yes_prob`` call is ONE ``generate`` call for all images x questions, image-major (all questions
about an image next to each other), each asking for one new token with its top ``top_logprobs``
log-probabilities; each distinct image carries a content-derived id (``multi_modal_uuids``), so
the engine processes and hashes it once. P(yes) is read from those top tokens exactly as
:class:`rewards.judges.openai_server.OpenAIJudge` reads a server's answer (the same
:func:`~rewards.judges.openai_server.yes_prob_from_top`): every spelling of "yes" against every
spelling of "no" (``scoring="normalized"``) or the "yes" mass alone (``"raw"``); an answer without
a yes/no token among the top tokens is NaN with the reason ``"no yes/no token"``.

The prompt text is the local judge's: the model's chat template rendered by
:class:`rewards.judges.prefix_scoring.ChatPrompt` (image, then context and question), so the
three backends ask the same question.

Sharing the GPU with the trainer: ``gpu_memory_utilization`` caps the engine's share (weights and
KV cache) and ``release()`` puts the engine to sleep (level 1: weights to CPU, KV cache freed);
the next call wakes it. Sleep mode exists on CUDA only; on other devices ``release()`` does
nothing.

vLLM is an optional dependency (``pip install vllm`` on a GPU machine; ``make test-vllm`` builds
a CPU engine for the tests); it is imported when the judge is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rewards.images import image_hash, to_pil
from rewards.judges.base import (
    Judge,
    JudgeError,
    JudgeItem,
    JudgeResult,
    config_fingerprint,
    image_major,
)
from rewards.judges.openai_server import NO_YES_NO_TOKEN, BadAnswer, yes_prob_from_top
from rewards.judges.prefix_scoring import ChatPrompt
from rewards.rubric_set import check_scoring


class VLLMJudge(Judge):
    """Yes/no judge on an in-process vLLM engine (see the module docstring).

    Args:
        model_path: local folder with the model and processor (``from_pretrained`` layout).
        scoring: ``"normalized"`` or ``"raw"``.
        top_logprobs: top tokens read for P(yes) (the engine's ``max_logprobs`` is set to it).
        gpu_memory_utilization: share of the GPU the engine may take (weights + KV cache).
        max_model_len: longest prompt + answer, in tokens.
        dtype: the engine's dtype ("auto", "bfloat16", "float32", ...).
        enable_sleep_mode: allow ``release()`` to put the engine to sleep (CUDA only).
        kv_cache_memory_gb: KV cache size instead of deriving it from the utilisation (needed on
            CPU, where vLLM has no GPU memory to measure).
        engine_kwargs: further ``vllm.LLM`` arguments (``max_num_seqs``, ``enforce_eager``, ...).
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        scoring: str = "normalized",
        top_logprobs: int = 20,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 4096,
        dtype: str = "auto",
        enable_sleep_mode: bool = True,
        kv_cache_memory_gb: float | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_scoring(scoring)
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}")
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"judge model folder {path} has no config.json")
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise JudgeError(
                "judge=vllm needs the vllm package (pip install vllm on a GPU machine; "
                "`make test-vllm` shows a CPU setup)"
            ) from err
        from rewards.judges.transformers_judge import load_processor

        self.scoring = scoring
        self.top_logprobs = top_logprobs
        self.yes_no_from, self.top_k = "top_k", top_logprobs  # all the engine returns
        self.path = path
        self.prompt = ChatPrompt(load_processor(path))
        kwargs: dict[str, Any] = {
            "model": str(path),
            "enable_prefix_caching": True,
            "max_logprobs": top_logprobs,
            "max_model_len": max_model_len,
            "dtype": dtype,
            "limit_mm_per_prompt": {"image": 1, "video": 0},
            **(engine_kwargs or {}),
        }
        if kv_cache_memory_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_gb * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.sleep_mode = enable_sleep_mode and torch.cuda.is_available()
        if self.sleep_mode:
            kwargs["enable_sleep_mode"] = True
        self.llm = LLM(**kwargs)
        self.sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top_logprobs)
        self._asleep = False

    def model_identity(self) -> tuple[str, str | None]:
        """The model folder's name and the fingerprint of its config (as the local judge's)."""
        from transformers import AutoConfig

        return self.path.name, config_fingerprint(AutoConfig.from_pretrained(self.path).to_dict())

    def requests(self, items: Sequence[JudgeItem]) -> tuple[list[dict[str, Any]], list[int]]:
        """The engine's prompts for ``items`` in image-major order, and that order."""
        first_seen, order = image_major(items)
        images, ids = {}, {}
        for key, i in first_seen.items():
            image = items[i].image
            image = to_pil(image[None])[0] if isinstance(image, torch.Tensor) else image
            if not isinstance(image, Image.Image):
                raise TypeError(f"item {i}: image is a {type(image).__name__}, not a PIL image")
            images[key] = image.convert("RGB")
            ids[key] = image_hash(images[key])
        prompts = [
            {
                "prompt": self.prompt.full_text(items[i].context, items[i].question),
                "multi_modal_data": {"image": images[id(items[i].image)]},
                "multi_modal_uuids": {"image": [ids[id(items[i].image)]]},
            }
            for i in order
        ]
        return prompts, order

    def yes_prob(self, items: Sequence[JudgeItem]) -> JudgeResult:
        if not items:
            return JudgeResult(torch.empty(0), [])
        self._wake()
        prompts, order = self.requests(items)
        outputs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        probs = torch.full((len(items),), float("nan"))
        reasons: list[str | None] = [None] * len(items)
        for i, output in zip(order, outputs):
            top = output.outputs[0].logprobs[0]
            entries = [{"token": lp.decoded_token, "logprob": lp.logprob} for lp in top.values()]
            try:
                p = yes_prob_from_top(entries, self.scoring)
            except BadAnswer as err:  # e.g. NaN logprobs from non-finite weights
                reasons[i] = err.reason
                continue
            if p is None:
                reasons[i] = NO_YES_NO_TOKEN
            else:
                probs[i] = p
        return JudgeResult(probs, reasons)

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def release(self) -> None:
        """Put the engine to sleep (weights to CPU, KV cache freed); the next call wakes it."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True
