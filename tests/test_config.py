"""Config loading: defaults, YAML, overrides, and the errors users see."""

from __future__ import annotations

import pytest

from backbone_ssl.config import closest_key, load_config
from backbone_ssl.errors import UserError
from backbone_ssl.methods.byol import BYOLConfig
from backbone_ssl.methods.dino import DINOConfig


def test_yaml_defaults_match_dataclass_defaults():
    # the shipped YAML documents the defaults: it must not silently change them
    from omegaconf import OmegaConf

    from backbone_ssl.config import default_config_file
    from backbone_ssl.methods.identity import IdentityConfig
    from backbone_ssl.methods.inpaint import InpaintConfig
    from backbone_ssl.methods.person import PersonConfig

    for cls, name in ((DINOConfig, "dino"), (BYOLConfig, "byol"), (InpaintConfig, "inpaint"),
                      (PersonConfig, "person"), (IdentityConfig, "identity")):
        shipped = OmegaConf.to_container(OmegaConf.load(default_config_file(name)))
        assert shipped == OmegaConf.to_container(OmegaConf.structured(cls)), name


def test_overrides_apply_with_types():
    cfg = load_config(DINOConfig, "dino", overrides=["optim.lr=0.5", "trainer.devices=2",
                                                     "dino.n_local_views=0", "seed=7"])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.devices == 2
    assert cfg.dino.n_local_views == 0
    assert cfg.seed == 7


def test_set_keys_and_required_contract_keys():
    cfg = load_config(BYOLConfig, "byol", data__path="/x y/z=1")
    assert cfg.data.path == "/x y/z=1"
    for key in ("seed", "data.batch_size", "data.image_size", "data.num_workers", "model.arch",
                "optim.lr", "trainer.max_epochs", "trainer.max_steps", "trainer.accelerator",
                "trainer.devices", "trainer.strategy", "trainer.precision"):
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)


def test_unknown_key_names_the_closest():
    expected = r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'"
    with pytest.raises(UserError, match=expected):
        load_config(DINOConfig, "dino", overrides=["optim.lrr=0.1"])
    with pytest.raises(UserError, match="did you mean 'data.batch_size'"):
        load_config(DINOConfig, "dino", overrides=["data.batchsize=3"])


def test_wrong_type_is_one_clear_error():
    with pytest.raises(UserError, match=r"bad value for config key 'data\.batch_size'"):
        load_config(DINOConfig, "dino", overrides=["data.batch_size=abc"])


def test_malformed_override():
    with pytest.raises(UserError, match="expected key=value"):
        load_config(DINOConfig, "dino", overrides=["=3"])


def test_config_file_is_read_and_missing_file_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.25\n")
    assert load_config(DINOConfig, "dino", config_file=f).optim.lr == 0.25
    with pytest.raises(UserError, match="config file not found"):
        load_config(DINOConfig, "dino", config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    with pytest.raises(UserError, match="cannot parse config file"):
        load_config(DINOConfig, "dino", config_file=bad)


def test_closest_key_by_leaf():
    assert closest_key("trainer.max_step", ["trainer.max_steps", "trainer.max_epochs"]) == \
        "trainer.max_steps"
    assert closest_key("zzzz", ["a.b"]) is None


def test_cli_method_list_is_the_registry():
    """The pretrain / search help names every registered method (the list is written out so that
    building the parser stays torch-free); a method added to METHODS and not to the help fails."""
    from backbone_ssl.cli import METHOD_NAMES
    from backbone_ssl.methods import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)


@pytest.mark.parametrize("method", ["identity", "person", "inpaint"])
@pytest.mark.parametrize("override", ["data.cache=true", "data.batch_augment=true",
                                      "data.context_swap=0.5", "data.sequence_positives=0.5"])
def test_direct_image_methods_refuse_view_keys(method, override):
    """identity, person and inpaint read images directly: a view-pipeline key would be silently
    ignored, so it is refused, naming the key; the same key is accepted by a view method."""
    from backbone_ssl.methods import get_method

    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"'{key}' is for the view-based methods.*{method}"):
        load_config(get_method(method).config_cls, method, overrides=[override])
    assert getattr(load_config(DINOConfig, "dino", overrides=[override]).data, key[5:])
