"""Bad input as a user meets it: corrupt images, malformed rubric set files, and configs composed
from command-line overrides with a required field left unset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from rewards import build_reward
from rewards.judges.pixel import PixelJudge
from rewards.multi import MultiReward
from rewards.pixel_target import PixelTargetReward
from rewards.rubric import RubricReward
from rewards.rubric_set import RubricSetError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "conf" / "rubrics" / "demo_pixel.json"


def _png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_corrupt_images_are_nan_with_counted_reasons_and_the_rest_is_unchanged():
    good = [Image.open(io.BytesIO(_png_bytes(seed))) for seed in (0, 1)]
    truncated = Image.open(io.BytesIO(_png_bytes(2)[:80]))  # header parses, pixels do not
    empty = Image.new("RGB", (0, 0))
    reward = RubricReward(str(DEMO), PixelJudge())
    out = reward([good[0], truncated, good[1], empty], ["a", "b", "c", "d"])
    alone = reward([Image.open(io.BytesIO(_png_bytes(seed))) for seed in (0, 1)], ["a", "c"])
    assert torch.isnan(out.scores[[1, 3]]).all()
    torch.testing.assert_close(out.scores[[0, 2]], alone.scores)
    for name, values in out.details.items():
        assert torch.isnan(values[[1, 3]]).all(), name
        torch.testing.assert_close(values[[0, 2]], alone.details[name])
    assert out.failures == {
        "corrupt image: does not decode (image file is truncated)": 1,
        "corrupt image: empty image": 1,
    }


def test_non_finite_tensor_samples_are_nan_in_a_mix_and_never_reach_the_components():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images[1, 0, 3, 3] = float("nan")
    images[2, 2, 0, 0] = float("inf")
    calls = []

    class Recording(PixelTargetReward):
        def score(self, images, prompts, metadata):
            calls.append(len(images))
            return super().score(images, prompts, metadata)

    mix = MultiReward({"target": {"reward": Recording(), "weight": 2.0}})
    out = mix(images, ["p"] * 3)
    assert calls == [1]
    assert torch.isnan(out.scores[1:]).all() and not torch.isnan(out.scores[0])
    assert out.failures == {"corrupt image: non-finite pixel values": 2}
    alone = PixelTargetReward()(images[:1], ["p"]).scores[0]
    torch.testing.assert_close(out.scores[0], 2.0 * alone)
    none_left = mix(images[1:], ["p"] * 2)  # every image corrupt: nothing is scored at all
    assert calls == [1] and torch.isnan(none_left.scores).all() and none_left.details == {}
    assert none_left.failures == {"corrupt image: non-finite pixel values": 2}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(schema_version=7), "schema_version"),
        (lambda d: d["judge_template"].update(question="Is it so?"), "judge_template.question"),
        (lambda d: d.update(scoring="logit"), "scoring"),
        (lambda d: d.update(rubrics=[]), "rubrics"),
        (lambda d: d["rubrics"][1].update(id=d["rubrics"][0]["id"]), "rubrics[1].id"),
        (lambda d: d["rubrics"][0].pop("text"), "rubrics[0].text"),
        (lambda d: d["rubrics"][3].update(weight=float("nan")), "rubrics[3].weight"),
        (lambda d: d["rubrics"][0].update(provenance="seed"), "rubrics[0].provenance"),
    ],
)
def test_malformed_rubric_set_names_the_field_and_the_file(tmp_path, edit, field):
    data = json.loads(DEMO.read_text())
    data.setdefault("judge_template", {"context": "{prompt}", "question": "{rubric}"})
    edit(data)
    path = tmp_path / "broken_set.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RubricSetError) as err:
        RubricReward(str(path), PixelJudge())
    assert "broken_set.json" in str(err.value) and f"'{field}'" in str(err.value)


def test_rubric_set_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "half_written.json"
    path.write_text('{"schema_version": 1, "rubrics": [')
    with pytest.raises(RubricSetError, match=r"half_written\.json: not valid JSON"):
        RubricReward(str(path), PixelJudge())


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "override"),
    [
        (("reward=rubric", "judge=qwen3_vl"), "judge.model_path"),
        (("reward=multi", "judge=qwen2_5_vl"), "judge.model_path"),
        (("reward=pickscore",), "reward.path"),
        (("reward=hpsv3", "reward.path=/somewhere"), "reward.checkpoint"),
    ],
)
def test_an_unset_required_field_names_the_override_to_pass(overrides, override):
    with pytest.raises(MissingMandatoryValue, match=rf"^{override} is required .* {override}="):
        build_reward(_compose(*overrides).reward)


def test_rubric_and_mix_compose_from_overrides_and_score():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rubric = build_reward(_compose("reward=rubric", "judge=pixel", "judge.scoring=raw").reward)
    assert isinstance(rubric, RubricReward) and rubric.judge.scoring == "normalized"
    target = build_reward(_compose("reward=pixel_target").reward)
    mix = build_reward(_compose("reward=multi", "judge=pixel").reward)
    prompts = ["a", "b"]
    expected = rubric(images, prompts).scores + 0.5 * target(images, prompts).scores
    torch.testing.assert_close(mix(images, prompts).scores, expected)


def test_image_hash_follows_content_mode_and_size_not_the_object():
    from rewards.images import image_hash

    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert image_hash(image) == image_hash(Image.fromarray(pixels.copy()))
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert image_hash(Image.fromarray(changed)) != image_hash(image)
    # Same bytes, other shape: 8x8 RGB and 16x4 RGB hold the same 192 bytes.
    assert image_hash(Image.fromarray(pixels.reshape(4, 16, 3))) != image_hash(image)
