"""Composing the Hydra config tree and validating it before anything runs."""

from pathlib import Path

import pytest

from finealign.config import CONFIG_DIR_ENV, compose, config_dir, validate
from finealign.errors import ConfigError

GROUPS = ("encoder", "aligner", "loss", "data", "train")


def test_config_dir_is_the_repository_tree():
    assert config_dir() == Path(__file__).resolve().parents[1] / "configs"
    assert (config_dir() / "config.yaml").is_file()


def test_config_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("seed: 7\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert config_dir() == tmp_path.resolve()
    assert compose().seed == 7
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=CONFIG_DIR_ENV):
        config_dir()


def test_default_config_validates_and_repeated_compose_works():
    spec = validate(compose())
    assert spec.aligner[0] == "mean_max" and spec.loss[0] == "infonce" and spec.data[0] == "toy"
    assert spec.vision[1]["embed_dim"] == spec.embed_dim  # the shared width reaches each encoder
    again = compose(overrides=["aligner=hard", "loss=triplet", "train.lr=0.01"])
    assert again.aligner.name == "hard" and again.loss.name == "triplet" and again.train.lr == 0.01


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_validates(group):
    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    assert options
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option == "features":
            overrides.append("data.root=/nonexistent/features")  # required; not read by validate
        cfg = compose(overrides=overrides)
        spec = validate(cfg)
        if group in ("aligner", "loss", "data"):
            assert getattr(spec, group)[0] == cfg[group].name


def test_required_group_files_exist():
    expected = {
        "aligner": {"global", "mean_max", "weighted_mean_max", "hard", "tokenflow", "two_stage", "cross_attention"},
        "loss": {"infonce", "triplet", "cmc"},
        "data": {"flickr8k", "flickr30k", "coco", "msrvtt", "features", "toy"},
        "encoder": {"vit_b16_bert", "resnet50_bert", "mobilenet_minilm", "bigru_precomputed", "cached", "toy"},
        "train": {"default", "quick"},
    }
    for group, names in expected.items():
        assert names <= {p.stem for p in (config_dir() / group).glob("*.yaml")}, group


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (["aligner.name=mean_maxx"], r"aligner\.name: unknown aligner 'mean_maxx'.*mean_max"),
        (["loss.name=nce"], r"loss\.name: unknown loss\w* 'nce'.*infonce"),
        (["train.lr=-0.001"], r"train\.lr must be a finite number > 0, got -0\.001"),
        (["train.batch_size=0"], r"train\.batch_size"),
        (["train.amp=fp8"], r"train\.amp"),
        (["loss.temperature=-0.07"], r"loss: .*temperature must be a finite number > 0"),
        (["loss=triplet", "loss.margin=-1"], r"loss: .*margin"),
        (["aligner=hard", "aligner.temperature=0"], r"aligner: .*temperature"),
        (["+aligner.widht=3"], r"aligner: .*has no option 'widht'"),
        (["+train.epoch=3"], r"train has no option 'epoch'.*'epochs'"),
        (["encoder.embed_dim=-4"], r"encoder\.embed_dim"),
        (["encoder.vision.head=lstm"], r"encoder\.vision: .*head"),
        (["data.concepts=0"], r"data: .*concepts"),
        (["eval.chunk_items=0"], r"eval\.chunk_items"),
        (
            ["train.warmup_fraction=1.0", "train.warmup_steps=0"],
            r"train\.warmup_fraction must be a finite number in \[0, 1\)",
        ),
        (["train.warmup_fraction=0.1"], r"train\.warmup_fraction must be 0 when warmup_steps is set \(200\)"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(compose(overrides=overrides))


def test_unknown_group_option_is_a_config_error():
    with pytest.raises(ConfigError, match="aligner"):
        compose(overrides=["aligner=nonexistent"])
    with pytest.raises(ConfigError, match="cannot compose"):
        compose(overrides=["no_such_key=1"])


def test_run_experiment_rejects_bad_config_before_reading_data(tmp_path):
    from finealign.engine.experiment import run_experiment

    cfg = compose(
        overrides=["data=features", f"data.root={tmp_path / 'missing'}", "train.lr=-1", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="train.lr"):  # not a DataError about the missing cache
        run_experiment(cfg)
    assert not any(tmp_path.iterdir())


def test_string_booleans_and_infinite_lr_are_refused():
    import pytest

    from finealign.config import compose, validate
    from finealign.errors import ConfigError
    from finealign.registry import create_aligner

    for value in ("no", "false", 0):
        with pytest.raises(ConfigError, match="normalize must be true or false"):
            create_aligner("mean_max", normalize=value)
    with pytest.raises(ConfigError, match="normalize"):
        validate(compose("config", ["aligner.normalize='no'"]))
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        validate(compose("config", ["train.lr=inf"]))


def test_warmup_is_given_in_steps_or_as_a_fraction_of_the_run():
    steps = validate(compose(overrides=["train.warmup_steps=30"])).train
    fraction = validate(compose(overrides=["train.warmup_steps=0", "train.warmup_fraction=0.1"])).train
    assert (steps.warmup_for(1000), fraction.warmup_for(1000), fraction.warmup_for(44)) == (30, 100, 4)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.epochs=true", "eval.batch_size=true"], r"train\.epochs must be a positive int, got True"),
        (["eval.batch_size=true"], r"eval\.batch_size must be a positive int, got True"),
        (["train.num_workers=false"], r"train\.num_workers must be a non-negative int, got False"),
        (["train.lr=true"], r"train\.lr must be a finite number > 0, got True"),
        (["train.amp=bf61"], r"train\.amp must be one of none, bf16, fp16, got 'bf61'\. Did you mean 'bf16'"),
    ],
)
def test_a_bool_is_never_an_int_and_choices_suggest_close_matches(overrides, key):
    """`finealign train train.epochs=true eval.batch_size=true` is refused, naming the key."""
    with pytest.raises(ConfigError, match=key):
        validate(compose(overrides=overrides))


def test_a_mistyped_group_choice_names_its_close_matches():
    """`aligner=meanmax` on the command line gets what `create_aligner("meanmax")` gets."""
    with pytest.raises(ConfigError, match=r"aligner=meanmax: no aligner config 'meanmax'\. Did you mean 'mean_max'"):
        compose(overrides=["aligner=meanmax"])
    with pytest.raises(ConfigError, match=r"train=quik: .*Did you mean 'quick'"):
        compose(overrides=["+train=quik"])
    compose(overrides=["aligner=hard", "seed=3", "device=cpu"])  # options, and keys that are not groups
