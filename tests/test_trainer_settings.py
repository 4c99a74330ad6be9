"""The meta-trainer's own settings (`metatele.outer.TrainerSettings`) and the config above them: each value is
validated once, by the part that owns it; library errors name parameters (`ConfigError.params`), and the CLI
translates them into its options."""
from __future__ import annotations

import pytest

from metatele import cli, config
from metatele.errors import ConfigError
from metatele.outer import TrainerSettings
from metatele.outer.distributed import Solo


@pytest.mark.parametrize("kw, params, text", [
    ({"steps": 25, "unroll": 10}, ("steps", "unroll"), "steps (25) must be a multiple of unroll (10)"),
    ({"min_steps": 5, "unroll": 10}, ("min_steps",), "min_steps (5) must be between unroll (10) and steps (100)"),
    ({"meta_lr": 20.0}, ("meta_lr",), "meta_lr must be a number in (0, 10]"),
    ({"batch": 0}, ("batch",), "batch must be in [1, 4096]"),
    ({"meta_loss": "cube"}, ("meta_loss",), "unknown meta_loss 'cube'"),
    ({"second_order": 1}, ("second_order",), "second_order must be true or false"),
])
def test_trainer_settings_name_the_parameter_and_no_option(kw, params, text):
    with pytest.raises(ConfigError) as e:
        TrainerSettings(**kw)
    assert e.value.params == params and text in str(e.value) and "--" not in str(e.value)


def test_the_config_reports_the_same_errors_and_the_cli_adds_its_options(tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        config.load(steps=25)
    assert e.value.params == ("steps", "unroll") and "--" not in str(e.value)
    with pytest.raises(ConfigError) as e:  # a learned method's value: named by the spec that owns it
        config.load(hidden=0)
    assert e.value.params == ("hidden",) and "--" not in str(e.value)
    assert cli.main(["train", "--set", "steps=25", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("(--set steps=… or --set unroll=…)"), err
    with pytest.raises(ConfigError) as e:
        Solo(world=3).check(TrainerSettings(trajectories=10, batch=8))  # the last batch holds 2
    assert e.value.params == ("batch", "trajectories")


def test_the_config_composes_its_parts_and_stores_the_flat_keys():
    cfg = config.load(method="any-update", task="mixture", hidden=8, trajectories=32, batch=8, seed=3)
    assert cfg.trainer == TrainerSettings(trajectories=32, batch=8, seed=3)
    assert cfg.spec.hidden == 8 and cfg.family.name == "mixture"
    d = cfg.to_dict()
    assert list(d) == [f for f in config.KEYS] and d["hidden"] == 8
    assert config.load(**d) == cfg  # a stored config rebuilds the same parts
