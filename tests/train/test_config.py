"""Run configs: defaults, every shipped YAML file, overrides, the error messages, and save/load."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jresnet.train.config import (
    DATASETS,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))
CONFIG_FILE = REPO / "jresnet" / "train" / "config.py"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and shipped files ----------------------------------------------------------------------


def test_none_gives_the_dataclass_defaults() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert (cfg.name, cfg.data.name, cfg.model.name) == ("digits_resnet20", "digits", "resnet20")
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.weight_decay) == (0.1, "cosine", 5e-4)
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.batch_size) == (None, 30, 128)


def test_the_configs_folder_has_the_documented_files() -> None:
    names = {p.name for p in CONFIG_FILES}
    assert names >= {"digits.yaml", "mnist.yaml", "cifar10_resnet20.yaml", "cifar10_resnet56.yaml",
                     "cifar10_resnet110.yaml", "cifar10_resnet18.yaml", "imagefolder_resnet50.yaml"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name.startswith(path.stem.split("_")[0])
    assert load_config(save_config(cfg, tmp_path / "saved.yaml")) == cfg


def test_digits_yaml_writes_out_exactly_the_defaults() -> None:
    path = REPO / "configs" / "digits.yaml"
    assert load_config(path) == RunConfig()
    # "written out" means every key appears in the file, not just that omitted keys default
    written = config_to_dict(load_config(path))
    import yaml

    assert yaml.safe_load(path.read_text()).keys() == written.keys()
    for section in ("data", "model", "optim", "train"):
        assert yaml.safe_load(path.read_text())[section].keys() == written[section].keys()


@pytest.mark.parametrize("depth, warmup", [(20, 0), (56, 0), (110, 400)])
def test_cifar10_he2016_recipe(depth: int, warmup: int) -> None:
    cfg = load_config(REPO / "configs" / f"cifar10_resnet{depth}.yaml")
    assert cfg.model.name == f"resnet{depth}"
    assert cfg.data == DataConfig(name="cifar10", val_fraction=0.1, crop_padding=4, flip=True)
    assert cfg.optim == OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="multistep",
                                    milestones=(32000, 48000), gamma=0.1, warmup_steps=warmup)
    assert (cfg.train.batch_size, cfg.train.steps, cfg.train.epochs) == (128, 64000, None)


def test_mnist_and_resnet50_configs() -> None:
    mnist = load_config(REPO / "configs" / "mnist.yaml")
    assert (mnist.data.name, mnist.data.root, mnist.data.crop_padding) == (
        "mnist", "../shared/data/mnist-8k", 2)
    assert "in_channels" not in mnist.model.overrides
    assert (mnist.train.epochs, mnist.optim.warmup_steps) == (15, 100)
    r50 = load_config(REPO / "configs" / "imagefolder_resnet50.yaml")
    assert (r50.model.name, r50.data.name, r50.train.batch_size, r50.train.precision) == (
        "resnet50", "imagefolder", 256, "bf16")
    assert (r50.optim.nesterov, r50.optim.label_smoothing, r50.optim.weight_decay) == (True, 0.1, 1e-4)
    # 5 epochs of ImageNet (1,281,167 images) at batch 256
    assert r50.optim.warmup_steps == round(5 * 1_281_167 / 256, -3)


def test_dataset_names_match_the_data_package() -> None:
    from jresnet.data import DATASET_NAMES

    assert set(DATASETS) == set(DATASET_NAMES)


# --- files: partial sections, YAML details -----------------------------------------------------------


def test_omitted_sections_and_keys_keep_their_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: quick\noptim:\n  lr: 0.05\nmodel:\n"))
    assert cfg == dataclasses.replace(RunConfig(), name="quick", optim=OptimConfig(lr=0.05))


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing yet\n")) == RunConfig()


def test_exponent_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    # PyYAML's safe_load reads `1e-4` as a string; a config must not.
    cfg = load_config(write(tmp_path, "optim:\n  weight_decay: 1e-4\n  lr: 2E-1\n"))
    assert (cfg.optim.weight_decay, cfg.optim.lr) == (1e-4, 0.2)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\noptim:\n  lr: 0.1\n   momentum: 0.9\n")
    message = error_of(path)
    assert message.startswith(f"invalid YAML in {path}, line 4")


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n")
    assert error_of(path) == f"invalid YAML in {path}, line 3, column 3: found duplicate key 'lr'"


def test_missing_file_lists_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "{}", "cifar10_resnet20.yaml")
    write(tmp_path, "{}", "mnist.yaml")
    missing = tmp_path / "cifar10_resnet2.yaml"
    assert error_of(missing) == (f"config file not found: {missing} (did you mean "
                                 f"{tmp_path / 'cifar10_resnet20.yaml'}? {tmp_path} holds: "
                                 f"cifar10_resnet20.yaml, mnist.yaml)")
    assert error_of(tmp_path / "nope" / "x.yaml") == (
        f"config file not found: {tmp_path / 'nope' / 'x.yaml'} (folder {tmp_path / 'nope'} does not exist)")


def test_a_non_mapping_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "- 1\n- 2\n")
    assert error_of(path) == f"the config in {path} must be a mapping of keys to values; got [1, 2] (list)"


# --- unknown keys -------------------------------------------------------------------------------------


def test_unknown_key_in_a_file_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    assert error_of(path) == f"unknown key 'optim.lrr' in {path}; did you mean 'optim.lr'?"


def test_unknown_key_without_a_close_match_lists_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  zzz: 1\n")
    assert error_of(path) == (f"unknown key 'data.zzz' in {path}; valid keys of data: name, root, "
                              "val_fraction, test_fraction, crop_padding, flip, cache_dir")


def test_unknown_section(tmp_path: Path) -> None:
    assert error_of(None, "optimizer.lr=0.1") == (
        "unknown key 'optimizer' in override 'optimizer.lr=0.1'; did you mean 'optim'?")
    assert error_of(None, "zzz=1") == (
        "unknown key 'zzz' in override 'zzz=1'; valid keys of the config: name, data, model, optim, train")


def test_unknown_key_in_an_override() -> None:
    assert error_of(None, "train.epoch=3") == (
        "unknown key 'train.epoch' in override 'train.epoch=3'; did you mean 'train.epochs'?")


# --- overrides ---------------------------------------------------------------------------------------


def test_overrides_parse_values_as_yaml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "optim:\n  clip_norm: 1.0\n"), [
        "optim.lr=0.05", "train.epochs=3", "optim.nesterov=true", "data.root=/x",
        "optim.milestones=[32000,48000]", "optim.clip_norm=null", "model.overrides.width_multiplier=2",
        "model.overrides.drop_path_rate=0.1", "optim.weight_decay=1e-4", "name=quick",
    ])
    assert cfg.optim == OptimConfig(lr=0.05, nesterov=True, milestones=(32000, 48000), clip_norm=None,
                                    weight_decay=1e-4)
    assert cfg.model.overrides == {"width_multiplier": 2, "drop_path_rate": 0.1}
    assert (cfg.train.epochs, cfg.data.root, cfg.name) == (3, "/x", "quick")


def test_later_overrides_win_and_sections_merge() -> None:
    cfg = load_config(None, ["optim.lr=0.5", "optim={lr: 0.3, gamma: 0.5}", "optim.momentum=0.8"])
    assert (cfg.optim.lr, cfg.optim.gamma, cfg.optim.momentum, cfg.optim.name) == (0.3, 0.5, 0.8, "sgd")


def test_an_override_can_replace_the_free_form_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  overrides: {width_multiplier: 2}\n")
    merged = load_config(path, ["model.overrides.groups=2"]).model.overrides
    assert merged == {"width_multiplier": 2, "groups": 2}
    assert load_config(path, ["model.overrides={}"]).model.overrides == {}


def test_an_override_without_equals_sign() -> None:
    for bad in ("optim.lr", "optim..lr=1", "=3"):
        assert error_of(None, bad) == f"override {bad!r} must look like key=value, e.g. optim.lr=0.05"


def test_overrides_must_be_a_sequence_not_one_string() -> None:
    with pytest.raises(TypeError, match="sequence of 'key=value' strings"):
        load_config(None, "optim.lr=0.1")  # type: ignore[arg-type]


# --- types -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("optim.lr=fast", "optim.lr must be a float; got 'fast' (str)"),
    ("optim.lr=true", "optim.lr must be a float; got True (bool)"),
    ("train.epochs=true", "train.epochs must be an int or null; got True (bool)"),
    ("train.batch_size=3.0", "train.batch_size must be an int; got 3.0 (float)"),
    ("train.batch_size=null", "train.batch_size must be an int; got None (NoneType)"),
    ("data.flip=1", "data.flip must be a bool (true or false); got 1 (int)"),
    ("data.root=3", "data.root must be a string or null; got 3 (int)"),
    ("optim.milestones=5", "optim.milestones must be a list of ints; got 5 (int)"),
    ("optim.milestones=[1, 2.5]", "optim.milestones[1] must be an int; got 2.5 (float)"),
    ("model.overrides=[1]", "model.overrides must be a mapping; got [1] (list)"),
    ("optim=5", "optim in override 'optim=5' must be a mapping of keys to values; got 5 (int)"),
])
def test_wrong_types_name_the_key_and_the_value(override: str, message: str) -> None:
    got = error_of(None, override)
    assert got.startswith(message)


def test_errors_say_which_file_or_override_set_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: fast\n")
    assert error_of(path) == f"optim.lr must be a float; got 'fast' (str) (set by {path})"
    assert error_of(path, "optim.lr=slow") == (
        "optim.lr must be a float; got 'slow' (str) (set by override 'optim.lr=slow')")


def test_ints_widen_to_floats_and_lists_become_tuples() -> None:
    cfg = load_config(None, ["optim.lr=1", "optim.milestones=[10, 20]"])
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0
    assert cfg.optim.milestones == (10, 20)


def test_python_construction_is_checked_too() -> None:
    assert type(OptimConfig(lr=1).lr) is float
    assert OptimConfig(milestones=[5, 7]).milestones == (5, 7)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^optim.lr must be > 0; got -1.0$"):
        OptimConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"^optim must be an OptimConfig; got \{"):
        RunConfig(optim={"lr": 0.1})  # type: ignore[arg-type]


def test_model_overrides_must_be_plain_data() -> None:
    with pytest.raises(ConfigError, match=r"^model.overrides.x must be plain YAML data .*got <object"):
        ModelConfig(overrides={"x": object()})
    assert ModelConfig(overrides={"depths": (1, 2)}).overrides == {"depths": [1, 2]}


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().optim.lr = 1.0  # type: ignore[misc]


# --- ranges and choices ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1); got 1.5"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1); got 1.0"),
    ("optim.lr=0", "optim.lr must be > 0; got 0.0"),
    ("optim.lr=.inf", "optim.lr must be finite; got inf"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0; got -0.0001"),
    ("optim.gamma=0", "optim.gamma must be in (0, 1]; got 0.0"),
    ("optim.label_smoothing=1", "optim.label_smoothing must be in [0, 1); got 1.0"),
    ("optim.clip_norm=0", "optim.clip_norm must be > 0; got 0.0"),
    ("optim.ema_decay=1", "optim.ema_decay must be in (0, 1); got 1.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0; got -1"),
    ("data.val_fraction=0", "data.val_fraction must be in (0, 1); got 0.0"),
    ("data.val_fraction=1", "data.val_fraction must be in (0, 1); got 1.0"),
    ("data.test_fraction=1", "data.test_fraction must be in [0, 1); got 1.0"),
    ("data.crop_padding=-2", "data.crop_padding must be >= 0; got -2"),
    ("train.batch_size=0", "train.batch_size must be >= 1; got 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1; got 0"),
    ("train.log_every=0", "train.log_every must be >= 1; got 0"),
    ("train.eval_every=0", "train.eval_every must be >= 1; got 0"),
    ("data.name=cifar", "data.name must be one of digits, mnist, fashion_mnist, cifar10, cifar100, "
                        "imagefolder, npz; got 'cifar'; did you mean 'cifar10'?"),
    ("optim.name=adam", "optim.name must be one of sgd, adamw; got 'adam'; did you mean 'adamw'?"),
    ("optim.schedule=step", "optim.schedule must be one of cosine, multistep, constant; got 'step'"),
    ("train.precision=fp16", "train.precision must be one of fp32, bf16; got 'fp16'"),
    ("train.nan_policy=ignore", "train.nan_policy must be one of stop, skip; got 'ignore'"),
    ("optim.milestones=[48000,32000]", "optim.milestones must be strictly increasing steps >= 1; "
                                       "got [48000, 32000]"),
    ("optim.milestones=[5,5]", "optim.milestones must be strictly increasing steps >= 1; got [5, 5]"),
    ("name=a/b", "name must be a folder name"),
    ("name=..", "name must be a folder name"),
])
def test_out_of_range_values(override: str, message: str) -> None:
    got = error_of(None, override)
    assert got.startswith(message)
    assert got.endswith(f"(set by override {override!r})")


@pytest.mark.parametrize("override", [
    "optim.momentum=0", "optim.gamma=1", "data.test_fraction=0", "optim.weight_decay=0",
    "optim.ema_decay=0.999", "optim.clip_norm=1", "train.eval_every=null", "data.crop_padding=0",
])
def test_boundaries_that_are_allowed(override: str) -> None:
    load_config(None, [override])


def test_exactly_one_of_steps_and_epochs(tmp_path: Path) -> None:
    both = write(tmp_path, "train: {steps: 640, epochs: 30}\n")
    assert error_of(both).startswith(
        "train.steps (640) and train.epochs (30) are both set; set exactly one and the other to null, "
        "e.g. train.steps=640 train.epochs=null")
    # Overriding the run's length in one unit replaces the other, as a user expects.
    assert load_config(None, ["train.steps=640"]).train.epochs is None
    assert load_config(REPO / "configs" / "cifar10_resnet20.yaml", ["train.epochs=2"]).train.steps is None
    assert error_of(None, "train.steps=640", "train.epochs=3").startswith("train.steps (640) and train.epochs (3)")
    assert error_of(None, "train.epochs=null").startswith("train.steps and train.epochs are both null")
    cfg = load_config(None, ["train.steps=640", "train.epochs=null"])
    assert (cfg.train.steps, cfg.train.epochs) == (640, None)
    # the rule is checked after all overrides, so the order does not matter
    assert load_config(None, ["train.epochs=null", "train.steps=640"]) == cfg


# --- saving ------------------------------------------------------------------------------------------


def test_config_to_dict_is_plain_json() -> None:
    cfg = load_config(None, ["optim.milestones=[3, 5]", "model.overrides.widths=[8, 16]"])
    plain = config_to_dict(cfg)
    assert json.loads(json.dumps(plain)) == plain
    assert plain["optim"]["milestones"] == [3, 5]
    assert plain["model"]["overrides"] == {"widths": [8, 16]}
    assert set(plain) == {"name", "data", "model", "optim", "train"}


def test_save_then_load_is_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.milestones=[3, 5]", "optim.clip_norm=2.5", "optim.ema_decay=0.9999",
                             "model.overrides={width_multiplier: 2, widths: [8, 16]}", "data.root=/data/x",
                             "train.steps=100", "train.epochs=null", "optim.weight_decay=1e-5"])
    path = save_config(cfg, tmp_path / "deep" / "config.yaml")
    assert path.is_file()
    assert load_config(path) == cfg


@settings(max_examples=50, deadline=None)
@given(lr=st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
       seed=st.integers(min_value=-(2**63), max_value=2**63),
       root=st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_round_trip_is_exact(tmp_path_factory: pytest.TempPathFactory, lr: float, seed: int,
                             root: str | None) -> None:
    cfg = dataclasses.replace(RunConfig(), optim=OptimConfig(lr=lr), train=TrainConfig(seed=seed),
                              data=DataConfig(root=root))
    path = save_config(cfg, tmp_path_factory.mktemp("rt") / "c.yaml")
    assert load_config(path) == cfg


# --- importing ---------------------------------------------------------------------------------------


def test_importing_config_does_not_import_jax() -> None:
    # Load the file on its own (importing the jresnet package would import JAX through its models).
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('cfg', {str(CONFIG_FILE)!r})\n"
            "module = importlib.util.module_from_spec(spec); sys.modules['cfg'] = module\n"
            "spec.loader.exec_module(module)\n"
            "assert module.load_config(None).train.epochs == 30\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'numpy', 'flax')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
