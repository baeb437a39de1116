import pytest

from recsys.config import ConfigError, DataConfig, load_config


def test_file_and_overrides(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("generator: {seed: 3, n_users: 10}\nbuild: {shards: 4}\n")
    overrides = ["generator.seed=5", "generator.drift.start_day=10", "validation.max_bad_row_share=0.1"]
    cfg = load_config(DataConfig, path, overrides)
    assert cfg.generator.seed == 5 and cfg.generator.n_users == 10 and cfg.build.shards == 4
    assert cfg.generator.drift.start_day == 10
    assert cfg.validation.max_bad_row_share == 0.1
    assert cfg.generator.n_items == DataConfig().generator.n_items  # untouched defaults stay


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["generator.sead=3"], r"unknown config key\(s\) \['generator.sead'\]"),
        (["build.shards=two"], r"build.shards: expected an integer, got 'two'"),
        (["validation.max_bad_row_share=[1]"], r"validation.max_bad_row_share: expected a number"),
        (["generator"], r"expected key=value"),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DataConfig, None, overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DataConfig, "nope.yaml")
