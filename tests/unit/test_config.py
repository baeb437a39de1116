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


def test_a_model_trains_with_its_own_section_over_the_shared_one(tmp_path):
    from recsys.training.config import OptimConfig, TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text("epochs: 6\noptim: {dense_lr: 0.001, embedding_lr: 0.05}\n"
                    "models:\n  dlrm: {steps_per_epoch: 300, optim: {dense_lr: 0.01}}\n")
    cfg = load_config(TrainConfig, path, ["models.two-tower.batch_size=512"])
    dlrm, two_tower = cfg.for_model("dlrm"), cfg.for_model("two-tower")
    assert (dlrm.steps_per_epoch, dlrm.epochs, dlrm.models) == (300, 6, {})
    assert dlrm.optim == OptimConfig(dense_lr=0.01)  # a section is whole: embedding_lr is the default, not 0.05
    assert (two_tower.steps_per_epoch, two_tower.batch_size, two_tower.optim) == (0, 512, cfg.optim)
    with pytest.raises(ConfigError, match=r"models: unknown model\(s\) \['ranker'\]"):
        load_config(TrainConfig, path, ["models.ranker.epochs=2"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['models.dlrm.epoch'\]"):
        load_config(TrainConfig, path, ["models.dlrm.epoch=2"]).for_model("dlrm")
    with pytest.raises(ConfigError, match="steps_per_epoch must be >= 0"):
        load_config(TrainConfig, path, ["models.dlrm.steps_per_epoch=-1"]).for_model("dlrm")
