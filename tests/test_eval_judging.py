"""What the benchmarks send a judge: the official prompts verbatim over real HTTP (system
message, wording, temperature, answer budget), the re-ask of an unparseable answer at a
sampling temperature, and the local transformers judge honouring a system message and a
temperature."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from eval.generation import GenerationConfig
from eval.judging import JudgeOptions, load_prompt
from eval.tiif import load_tiif, run_tiif
from eval.unigenbench import format_judge_prompt, load_unigenbench, run_unigenbench
from rewards.judges.openai_server import OpenAIJudge, decode_data_url
from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge

FIX = Path(__file__).resolve().parent / "fixtures_eval"
GEN = GenerationConfig(num_steps=1, height=32, width=32)


@contextmanager
def chat_server(answer: Callable[[dict], str]) -> Iterator[tuple[str, list[dict]]]:
    """A chat-completions endpoint on a free local port that records every request body and
    answers ``answer(body)``; yields (base_url, bodies)."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, data: dict) -> None:
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._send({"data": [{"id": "judge"}]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            self._send({"choices": [{"message": {"role": "assistant", "content": answer(body)}}]})

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def user_text(body: dict) -> str:
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url"  # the image first, then the text
    decode_data_url(parts[0]["image_url"]["url"])
    return parts[1]["text"]


def test_tiif_official_prompt_over_http_and_a_sampled_re_ask(tmp_path):
    """The official system message and wording go out verbatim; the first ask at temperature
    0 gets no yes/no lines, the re-ask (temperature 1.0, as the official script samples) parses."""
    cases = load_tiif(FIX / "tiif" / "prompts", FIX / "tiif" / "eval_prompts", types=["text"])
    for desc in ("short_description", "long_description"):
        path = tmp_path / "images" / "text" / "m" / desc / "0.png"
        path.parent.mkdir(parents=True)
        Image.new("RGB", (16, 16), (90, 20, 20)).save(path)

    def answer(body: dict) -> str:
        return "Yes, a sign.\nYes: sun\nno" if body["temperature"] > 0 else "I cannot tell."

    official = load_prompt("tiif", "official")
    with chat_server(answer) as (url, bodies):
        judge = OpenAIJudge(base_url=url, model="judge")
        opts = JudgeOptions(temperature=0.0, retries=1, retry_temperature=1.0, batch_size=2)
        summary = run_tiif(None, judge, cases, tmp_path, "m", GEN, opts)
        judge.close()
    assert [b["temperature"] for b in bodies] == [0.0, 0.0, 1.0, 1.0]
    assert {b["max_tokens"] for b in bodies} == {512}
    questions = "\n".join(q.strip() for q in cases[0].questions)
    wordings = {t.replace("##YNQuestions##", questions) for t in official.templates}
    for body in bodies:
        assert body["messages"][0] == {
            "role": "system", "content": "You are a professional image critic."
        }  # fmt: skip
        assert user_text(body) in wordings  # an official wording, questions one per line
    assert summary["types"]["text"]["short"]["correct"] == 3  # yes, yes, no: all right


def test_unigenbench_official_prompt_over_http(tmp_path):
    """The official template, filled, as the only user text after the image; no system
    message; greedy (the official request's do_sample=False); 4096 answer tokens."""
    cases, _ = load_unigenbench(FIX / "unigenbench" / "test_prompts_en.csv", limit=1)
    folder = tmp_path / "images" / "en" / "m"
    folder.mkdir(parents=True)
    for j in range(2):
        Image.new("RGB", (16, 16), (200, 0, 0)).save(folder / f"0_{j}.png")
    reply = "<analysis>['red', 'no car', 'painted']</analysis><score>[1, 0, 1]</score>"
    with chat_server(lambda body: reply) as (url, bodies):
        judge = OpenAIJudge(base_url=url, model="judge")
        summary = run_unigenbench(None, judge, cases, tmp_path, "m", GEN, JudgeOptions(), 2)
        judge.close()
    official = load_prompt("unigenbench", "official").templates[0]
    assert len(bodies) == 2
    for body in bodies:
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 4096
        assert user_text(body) == format_judge_prompt(official, cases[0])
    assert summary["sub"]["Style"] == {"correct": 2, "total": 2, "accuracy": 1.0}


def test_transformers_judge_system_message_and_temperature(monkeypatch):
    model, processor = build_tiny_vlm("qwen3_vl", seed=0)
    judge = TransformersJudge(model=model, processor=processor, batch_size=2)
    chats, calls = [], []
    render = processor.apply_chat_template
    generate = model.generate

    def spy_render(messages, **kwargs):
        chats.append(messages)
        return render(messages, **kwargs)

    def spy_generate(**kwargs):
        calls.append({k: kwargs.get(k) for k in ("do_sample", "temperature")})
        return generate(**kwargs)

    monkeypatch.setattr(processor, "apply_chat_template", spy_render)
    monkeypatch.setattr(model, "generate", spy_generate)
    image = Image.new("RGB", (32, 32), (10, 200, 10))
    judge.generate_many([([image], "Describe it.")], 3)
    judge.generate_many([([image], "Describe it.")], 3, temperature=0.8, system="Be strict.")
    assert [m["role"] for m in chats[0]] == ["user"]
    assert chats[1][0] == {"role": "system", "content": [{"type": "text", "text": "Be strict."}]}
    assert "Be strict." in render(chats[1], tokenize=False, add_generation_prompt=True)
    assert calls == [
        {"do_sample": False, "temperature": None},
        {"do_sample": True, "temperature": 0.8},
    ]


def test_options_resolve_the_preset_and_refuse_a_greedy_re_ask():
    tiif = JudgeOptions().asking("tiif")
    assert tiif.temperature == 1.0 and tiif.system == "You are a professional image critic."
    assert len(tiif.templates) == 3 and tiif.max_new_tokens == 512
    assert JudgeOptions(temperature=0.0).asking("tiif").temperature == 0.0
    ugb = JudgeOptions(prompt="ours").asking("unigenbench")
    assert ugb.max_new_tokens == 4096 and ugb.system is None and "{checkpoints}" in ugb.templates[0]
    assert ugb.describe()["prompt"] == "ours"
    with pytest.raises(ValueError, match="retry_temperature > 0"):
        JudgeOptions(retries=2, retry_temperature=0.0)
    with pytest.raises(ValueError, match="judging.prompt must be one of"):
        JudgeOptions(prompt="theirs")
