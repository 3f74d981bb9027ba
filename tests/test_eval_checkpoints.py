"""The trainer's eval hook and `eval.checkpoints` on a tiny run folder with one LoRA checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image

from eval.after_checkpoint import evaluate_pipeline
from eval.checkpoints import evaluate_checkpoints, find_checkpoints
from eval.generation import GenerationConfig, ImageJob, build_pipeline, generate_images

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval"
TINY = {"name": "tiny", "seed": 0, "dtype": "float32"}
GEN = ["generation.num_steps=1", "generation.height=32", "generation.width=32",
       "generation.guidance_scale=4.5", "generation.max_sequence_length=128"]  # fmt: skip


def hook_overrides(judge: str = "pixel") -> list[str]:
    """eval_hook=tiif_mini on the pixel-readable TIIF fixture, plus a UniGenBench subset."""
    ugb = f"{{csv:{FIX / 'unigenbench' / 'test_prompts_en.csv'},limit:1,images_per_prompt:2}}"
    return [
        f"judge={judge}",
        f"eval_hook.tiif.prompt_dir={FIX / 'tiif_pixel' / 'prompts'}",
        f"eval_hook.tiif.eval_dir={FIX / 'tiif_pixel' / 'eval_prompts'}",
        f"eval_hook.unigenbench={ugb}",
        "eval_hook.judging.answer_mode=yes_prob",
        *(f"eval_hook.{o}" for o in GEN),
    ]


def compose_cfg(config: str, overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose(config, overrides=overrides)


def test_hook_returns_flat_metrics_matching_its_summaries(tmp_path):
    cfg = compose_cfg("checkpoints", ["run_dir=unused", *hook_overrides()])
    hook = OmegaConf.create(OmegaConf.to_container(cfg.eval_hook, resolve=True))  # as rl.train
    pipe = build_pipeline(TINY, None, "cpu")
    metrics = evaluate_pipeline(pipe, hook, tmp_path, epoch=3)
    summary = json.loads((tmp_path / "tiif" / "summary.json").read_text())
    assert metrics["eval/tiif_short_overall"] == summary["overall"]["short"]
    assert metrics["eval/tiif_long_advanced"] == summary["levels"]["advanced"]["long"]
    # No UniGenBench testpoint is in the pixel grammar: every image is left out, so the hook
    # logs a coverage of 0 and no accuracy (not a made-up 0).
    assert metrics["eval/unigenbench_coverage"] == 0.0
    assert "eval/unigenbench_overall" not in metrics
    assert metrics["eval/tiif_short_coverage"] == 1.0
    # Pixel statements are answerable: 5 questions per image, all answered (none invalid).
    style = summary["types"]["style"]["short"]
    assert style["total"] == 5 and style["unparsed"] == 0 and style["scored"] == 2
    assert (tmp_path / "tiif/images/style/epoch_000003/long_description/1.png").is_file()


def _fake_run(run_dir: Path) -> None:
    """A run folder as rl.train leaves it: saved config and a complete LoRA checkpoint."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": TINY}), run_dir / ".hydra" / "config.yaml")
    for epoch in (2, 3):
        pipe = build_pipeline(TINY, None, "cpu")
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        pipe.transformer.add_adapter(config)
        gen = torch.Generator().manual_seed(epoch)
        with torch.no_grad():
            for name, param in pipe.transformer.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        checkpoint = run_dir / "checkpoints" / f"epoch_{epoch:06d}"
        StableDiffusion3Pipeline.save_lora_weights(
            checkpoint / "lora", transformer_lora_layers=get_peft_model_state_dict(pipe.transformer)
        )
        (checkpoint / "COMPLETE").write_text("{}")
    (run_dir / "checkpoints" / "epoch_000004").mkdir()  # half-written: ignored


def test_checkpoints_evaluates_base_and_lora_then_resumes(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    assert [e for e, _ in find_checkpoints(run)] == [2, 3]
    overrides = [f"run_dir={run}", *hook_overrides(), "eval_hook.unigenbench=null"]
    rows = evaluate_checkpoints(compose_cfg("checkpoints", overrides))
    assert [r["epoch"] for r in rows] == [0, 2, 3] and rows[0]["checkpoint"] == "base"
    out = run / "eval_checkpoints"
    assert (out / "checkpoints.png").stat().st_size > 1000
    base, lora2, lora3 = (
        np.asarray(Image.open(out / f"epoch_{e:06d}/tiif/images/style/epoch_{e:06d}"
                              "/short_description/0.png"), dtype=float)
        for e in (0, 2, 3)
    )  # fmt: skip
    assert np.abs(base - lora2).mean() > 1.0  # the LoRA was applied
    # Epoch 3 ran on the pipeline that had epoch 2 loaded and unloaded: it must equal a fresh
    # pipeline with only epoch 3's LoRA (up to uint8 rounding: the batch size differs).
    fresh = build_pipeline(TINY, run / "checkpoints" / "epoch_000003" / "lora", "cpu")
    job = ImageJob("A bright red painting.", tmp_path / "fresh.png", "style/short_description/0")
    generate_images(fresh, [job], GenerationConfig(num_steps=1, height=32, width=32))
    assert np.abs(np.asarray(Image.open(job.path), dtype=float) - lora3).max() <= 1

    again = evaluate_checkpoints(compose_cfg("checkpoints", overrides))
    assert again == rows  # nothing re-evaluated: rows come from metrics.jsonl
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # Another benchmark subset must not be mixed with these rows: refused, naming the change.
    other = [*overrides, "eval_hook.tiif.limit_per_type=1"]
    with pytest.raises(ValueError, match=r"other \['eval_hook'\] settings.*output_name="):
        evaluate_checkpoints(compose_cfg("checkpoints", other))


def test_hook_without_a_judge_fails_clearly(tmp_path):
    cfg = compose_cfg("checkpoints", ["run_dir=unused", *hook_overrides(), "~judge"])
    with pytest.raises(ValueError, match="eval_hook.judge is not set"):
        evaluate_pipeline(None, cfg.eval_hook, tmp_path, epoch=1)


def test_every_eval_config_composes():
    for name, extra in [
        ("preference", ["reward=rubric", "judge=pixel", "benchmark=pickapic"]),
        ("tiif", ["data.prompt_dir=x", "data.eval_dir=y"]),
        ("unigenbench", ["data.csv=x"]),
        ("checkpoints", ["run_dir=x", "eval_hook=none"]),
    ]:
        cfg = compose_cfg(name, extra)
        assert cfg.entry == name


def test_a_preset_for_another_entry_is_refused():
    from eval.common import check_entry

    cfg = compose_cfg("tiif", ["data.prompt_dir=x", "data.eval_dir=y", "entry=learn"])
    with pytest.raises(ValueError, match="preset for 'learn', not for eval.tiif"):
        check_entry(cfg, "tiif")
