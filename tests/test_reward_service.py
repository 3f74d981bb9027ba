"""The reward service and its client: end to end with a real server process on loopback serving
the aesthetic MLP on a tiny random CLIP (scores equal the in-process reward's), the API key,
retries on 5xx only, NaN-with-reason on failure, the request limits checked before decoding, and
one clear line for a service that is not there."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from omegaconf import OmegaConf
from PIL import Image

from rewards import build_reward
from rewards.base import Reward, RewardOutput
from rewards.http_limits import MIB, Limits, limits_from_config
from rewards.remote import RemoteReward
from rewards.scalar import AestheticReward, OcrReward
from rewards.serve_reward import SERVICE_LIMITS, RewardServer
from tests.test_scalar_flow_grpo import write_aesthetic_files

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)) for _ in range(n)]


@contextmanager
def reward_service(overrides: list[str], run_dir: Path, env: dict[str, str]) -> Iterator[tuple]:
    """``python -m rewards.serve_reward port=0 OVERRIDES`` as a real process with ``env`` added;
    yields (url, process) once its first line names the URL, and ends the process after."""
    command = [sys.executable, "-m", "rewards.serve_reward", "port=0", *overrides,
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if line.startswith("serving reward"):
                break
        else:
            pytest.fail("the reward service did not start:\n" + "".join(lines))
        assert (
            lines
            and lines[-1].startswith("serving reward")
            and " on http://127.0.0.1:" in (lines[-1])
        ), "".join(lines)
        yield lines[-1].split(" on ")[1].split()[0], process
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


@pytest.fixture(scope="module")
def served_aesthetic(tmp_path_factory):
    """The aesthetic reward served by a real process with an API key; yields (url, clip folder,
    mlp file)."""
    folder, mlp, _ = write_aesthetic_files(tmp_path_factory.mktemp("clip"))
    overrides = ["reward=aesthetic", f"reward.path={folder}", f"reward.mlp_path={mlp}"]
    run_dir = tmp_path_factory.mktemp("serve")
    with reward_service(overrides, run_dir, {"REWARD_API_KEY": "s3cret"}) as (url, _):
        yield url, folder, mlp


def test_served_aesthetic_equals_in_process(served_aesthetic, monkeypatch):
    url, folder, mlp = served_aesthetic
    monkeypatch.setenv("REWARD_API_KEY", "s3cret")
    images = _images(5)
    local = AestheticReward(path=str(folder), mlp_path=str(mlp))(images, [""] * 5)
    remote = build_reward({"_target_": "rewards.remote.RemoteReward", "url": url, "batch_size": 2})
    assert remote.name == "remote:aesthetic"
    out = remote(images, ["a"] * 5)
    np.testing.assert_allclose(out.scores.numpy(), local.scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.details["raw"].numpy(), local.details["raw"].numpy(), rtol=1e-6)
    out = remote(torch.rand(2, 3, 20, 20), ["a", "b"])  # tensors are sent as lossless PNG
    assert torch.isfinite(out.scores).all()


def test_wrong_api_key_is_a_nan_with_reason_not_retried(served_aesthetic, monkeypatch):
    url, _, _ = served_aesthetic
    monkeypatch.setenv("REWARD_API_KEY", "wrong")
    out = RemoteReward(url, retries=3, backoff_s=5.0)(_images(2), ["a", "b"])  # no 5 s waits
    assert torch.isnan(out.scores).all()
    assert out.failures == {
        "remote: HTTP 401: missing or wrong API key (Authorization: Bearer <key>)": 2
    }


class Flaky(Reward):
    """Raises on its first ``fail`` calls, then scores the image's mean red value; ``sleep_s``
    delays every call."""

    name = "flaky"

    def __init__(self, fail: int = 0, sleep_s: float = 0.0) -> None:
        self.fail, self.calls, self.sleep_s = fail, 0, sleep_s

    def score(self, images, prompts, metadata):
        self.calls += 1
        time.sleep(self.sleep_s)
        if self.calls <= self.fail:
            raise RuntimeError(f"flaky failure {self.calls}")
        reds = [float(np.asarray(image)[..., 0].mean()) for image in images]
        return RewardOutput(
            torch.tensor(reds), {"tag_len": torch.tensor([len(m) for m in metadata])}
        )


def test_retries_5xx_then_succeeds_or_gives_nan():
    images = [Image.new("RGB", (4, 4), (r, 0, 0)) for r in (10, 200, 30)]
    with RewardServer(Flaky(fail=2)) as server:
        out = RemoteReward(server.url, retries=2, backoff_s=0.01, batch_size=3)(images, ["p"] * 3)
        assert out.scores.tolist() == [10.0, 200.0, 30.0] and server.reward.calls == 3
    with RewardServer(Flaky(fail=5)) as server:
        out = RemoteReward(server.url, retries=1, backoff_s=0.01, batch_size=2)(images, ["p"] * 3)
        assert torch.isnan(out.scores).all() and server.reward.calls == 4  # 2 batches x 2 tries
        assert out.failures == {"remote: HTTP 500: RuntimeError: flaky failure 2": 2,
                                "remote: HTTP 500: RuntimeError: flaky failure 4": 1}  # fmt: skip


def test_metadata_reaches_the_reward_and_timeouts_are_nan():
    with RewardServer(Flaky()) as server:
        meta = [{"tag": "counting", "include": []}, {}]
        out = RemoteReward(server.url)([Image.new("RGB", (4, 4))] * 2, ["a", "b"], meta)
        assert out.details["tag_len"].tolist() == [2.0, 0.0]
    with RewardServer(Flaky(sleep_s=1.0)) as server:
        out = RemoteReward(server.url, timeout_s=0.2)([Image.new("RGB", (4, 4))], ["a"])
        assert math.isnan(out.scores[0]) and out.failures == {"remote: timeout after 0.2 s": 1}


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_limits_and_malformed_requests_are_refused_before_decoding():
    limits = Limits(
        max_body_bytes=20_000, max_images=2, max_image_pixels=32 * 32, image_formats=("PNG", "JPEG")
    )
    ocr = OcrReward(recognizer=lambda image: [("hello", 0.9)])
    with RewardServer(ocr, limits=limits) as server:
        url = f"{server.url}/score"

        def post(body):
            reply = requests.post(url, data=body if isinstance(body, bytes) else json.dumps(body))
            answer = reply.json()
            return reply.status_code, answer["error"]["message"] if "error" in answer else answer

        small = _png(Image.new("RGB", (8, 8)))
        assert post({"images": [small], "prompts": ['"hello"']})[0] == 200
        assert post({"images": [small], "prompts": ['say "hello"']})[1]["scores"] == [1.0]
        cases = [
            (b"not json", 400, "not JSON"),
            ({"images": small, "prompts": ["x"]}, 400, "must be lists"),
            ({"images": [small], "prompts": ["a", "b"]}, 400, "1 images, 2 prompts"),
            ({"images": [small] * 3, "prompts": ["x"] * 3}, 413, "the limit is 2"),
            ({"images": ["@@@"], "prompts": ["x"]}, 400, "not valid base64"),
            ({"images": [base64.b64encode(b"GIF89a....").decode()], "prompts": ["x"]}, 400,
             "not a PNG/JPEG image"),
            ({"images": [_png(Image.new("RGB", (64, 32)))], "prompts": ["x"]}, 413, "64x32"),
            ({"images": [small], "prompts": ["no quotes"]}, 400, 'no quoted text to read: "no'),
            (b"x" * 20_001, 413, "the limit is 20000"),
        ]  # fmt: skip
        for body, status, message in cases:
            got_status, got_message = post(body)
            assert got_status == status and message in got_message, (message, got_message)


def test_unreachable_service_fails_with_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ConnectionError, match=r"unreachable.*python -m rewards.serve_reward"):
        RemoteReward(f"http://127.0.0.1:{port}")


def test_the_config_limits_are_the_service_defaults_and_unknown_ones_are_refused():
    limits = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "serve_reward.yaml").limits)
    assert limits_from_config(limits) == SERVICE_LIMITS
    assert limits_from_config({"max_body_mb": 0.5}).max_body_bytes == MIB // 2
    with pytest.raises(ValueError, match="unknown limit 'max_body_bytes' .*max_body_mb"):
        limits_from_config({"max_body_bytes": 10})
