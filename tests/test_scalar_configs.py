"""Every scalar reward config names a real class, passes only arguments it takes, opens with the
command that uses it, and fails clearly when the mandatory local path is not set."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from rewards import build_reward

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"
SCALAR = ("clipscore", "pickscore", "hpsv2", "imagereward", "hpsv3", "unifiedreward", "aesthetic")


@pytest.mark.parametrize("name", SCALAR)
def test_config_matches_its_class(name):
    file = CONF / f"{name}.yaml"
    lines = file.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert any("python -m" in line for line in header), f"{name}: no command in the header"
    cfg = OmegaConf.load(file)
    cls = get_class(cfg._target_)
    params = inspect.signature(cls.__init__).parameters
    assert set(cfg) - {"_target_"} <= set(params), f"{name}: unknown keys"
    assert cfg.normalize in cls.NORMALIZATIONS
    assert OmegaConf.is_missing(cfg, "path")


def test_unset_path_fails_naming_it():
    with pytest.raises(MissingMandatoryValue, match="path"):
        build_reward(OmegaConf.load(CONF / "pickscore.yaml"))
