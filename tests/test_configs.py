"""Every choice of every config group composes (Hydra compose API) and instantiates.

The choices are read from conf/<group>/ (and, for Hydra's own groups, from the installed plugins too), so a new
config file is tested without touching this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_regan import GANModule
from lightning_regan.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_models,
    build_module,
    conditioning_classes,
    drop_unselected,
)
from lightning_regan.cli.train import validate_config
from lightning_regan.config import compose_config, config_dir
from lightning_regan.data import DatasetNotFoundError
from lightning_regan.losses import AdversarialLoss
from lightning_regan.regularizers import Regularizer

CONF = config_dir()
EMBEDDED_DATA = {"digits", "gaussians", "gaussians_grid"}
EMBEDDED_DATA_CLASSES = {"DigitsDataModule", "GaussianMixtureDataModule"}
# Keys of summary.json a sweeper may optimize (product.md).
SUMMARY_METRICS = {"best_value", "best_fid", "g_steps", "wall_time_s"}


def choices(group: str) -> list[str]:
    """The config files of ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def group_options(group: str) -> list[str]:
    """Every choice Hydra offers for ``group``: our files plus those of installed plugins."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    finally:
        GlobalHydra.instance().clear()


def compose(tmp_path: Path, *overrides: str, hydra: bool = False) -> DictConfig:
    return compose_config([*overrides, f"output_dir={tmp_path}"], return_hydra_config=hydra)


def model_fits(model: str, shape: tuple[int, ...]) -> bool:
    """Which architecture takes which data (documented in conf/model/*.yaml)."""
    if model == "mlp":
        return True
    if model == "dcgan":
        return len(shape) == 3
    if model == "resnet":
        return len(shape) == 3 and shape[1:] == (32, 32)
    raise AssertionError(f"conf/model/{model}.yaml is new: say here which data shapes it supports")


def test_config_dir_holds_the_root_config_and_every_group_of_the_contract():
    assert (CONF / "train.yaml").is_file()
    for group in ("model", "data", "loss", "regularizer", "early_stopping", "trainer", "logger", "experiment",
                  "hparams_search"):
        assert choices(group), f"conf/{group}/ is empty"
    assert {"mlp", "dcgan", "resnet"} <= set(choices("model"))
    assert {"gaussians", "digits", "mnist", "fashion_mnist", "cifar10", "image_folder"} <= set(choices("data"))
    assert {"none", "l1", "l2", "r1", "r2", "wgan_gp", "lecam"} <= set(choices("regularizer"))
    assert {"none", "plateau", "fid", "default"} <= set(choices("early_stopping"))
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(choices("trainer"))
    assert {"csv", "tensorboard"} <= set(choices("logger"))
    assert {"ring", "diverging"} <= set(choices("experiment"))
    assert {"joblib", "submitit_local", "submitit_slurm"} <= set(group_options("hydra/launcher"))


def test_default_config_is_valid_and_builds_everything(tmp_path):
    cfg = compose(tmp_path)
    validate_config(cfg)
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)
    assert isinstance(module, GANModule) and list(module.regularizers) == ["r1"]
    names = [type(cb).__name__ for cb in build_callbacks(cfg)]
    assert names == [
        "FIDMonitor", "OverfittingMonitor", "EarlyTermination", "SampleGrid", "ModelCheckpoint", "BestGenerator", "RunSummary",
        "GStepProgressBar",
    ]


@pytest.mark.parametrize("data", choices("data"))
@pytest.mark.parametrize("model", choices("model"))
def test_model_choice_builds_for_each_data_shape_or_says_what_fits(tmp_path, model, data):
    cfg = compose(tmp_path, f"model={model}", f"data={data}")
    shape = tuple(instantiate(cfg.data).shape)  # known from the config alone: no data needed
    if not model_fits(model, shape):
        with pytest.raises(InstantiationException, match=r"model=mlp|model=dcgan|data\.image_size=32"):
            build_models(cfg, shape)
        return
    generator, discriminator = build_models(cfg, shape)
    x = generator(torch.randn(2, cfg.model.latent_dim))
    assert tuple(x.shape) == (2, *shape)
    assert tuple(discriminator(x).shape) == (2,)


def test_resnet_trains_on_digits_resized_to_32(tmp_path):
    cfg = compose(tmp_path, "model=resnet", "data=digits", "data.image_size=32")
    shape = tuple(build_datamodule(cfg).shape)
    assert shape == (1, 32, 32)
    generator, discriminator = build_models(cfg, shape)
    assert tuple(discriminator(generator(torch.randn(2, cfg.model.latent_dim))).shape) == (2,)


def test_spectral_norm_option_parametrizes_d(tmp_path):
    cfg = compose(tmp_path, "model=mlp", "data=gaussians", "model.spectral_norm=true")
    _, discriminator = build_models(cfg, (2,))
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in discriminator.modules())


@pytest.mark.parametrize("data", choices("data"))
def test_data_choice_instantiates_and_checks_its_source(tmp_path, monkeypatch, data):
    monkeypatch.delenv("REGAN_DATA_ROOT", raising=False)
    cfg = compose(tmp_path, f"data={data}")
    # One source of truth: the DataModule says which FID features fit its data; the config leaves it to "auto" (the
    # key is there so that callbacks.fid.feature_extractor=classifier works without a +).
    assert cfg.callbacks.fid.get("feature_extractor", "auto") == "auto"
    assert instantiate(cfg.data).fid_feature_extractor in ("inception", "classifier", "identity")
    if data in EMBEDDED_DATA:
        datamodule = build_datamodule(cfg)
        assert len(tuple(datamodule.shape)) in (1, 3)
        return
    assert instantiate(cfg.data).fid_feature_extractor == "inception"
    with pytest.raises(DatasetNotFoundError, match="data.root"):  # no root given
        build_datamodule(cfg)
    with open_dict(cfg):
        cfg.data.root = str(tmp_path / "no-such-folder")
    with pytest.raises(DatasetNotFoundError, match="no-such-folder"):  # a root without the files
        build_datamodule(cfg)


@pytest.mark.parametrize("loss", choices("loss"))
def test_loss_choice_instantiates_and_computes(tmp_path, loss):
    obj = instantiate(compose(tmp_path, f"loss={loss}").loss)
    assert isinstance(obj, AdversarialLoss)
    real, fake = torch.randn(8), torch.randn(8)
    assert torch.isfinite(obj.d_loss(real, fake)) and torch.isfinite(obj.g_loss(fake))


@pytest.mark.parametrize("reg", choices("regularizer"))
def test_regularizer_choice_reaches_the_module(tmp_path, reg):
    cfg = compose(tmp_path, f"regularizer={reg}", "model=mlp", "data=gaussians")
    validate_config(cfg)
    expected = [] if reg == "none" else [reg]
    assert list(cfg.get("regularizer") or {}) == expected
    module = build_module(cfg, *build_models(cfg, (2,)))
    assert list(module.regularizers) == expected
    assert all(isinstance(r, Regularizer) for r in module.regularizers.values())


def test_regularizers_compose_as_a_list(tmp_path):
    cfg = compose(tmp_path, "regularizer=[r1,l2,lecam]", "regularizer.r1.every=16", "model=mlp", "data=gaussians")
    module = build_module(cfg, *build_models(cfg, (2,)))
    assert list(module.regularizers) == ["r1", "l2", "lecam"] and module.regularizers["r1"].every == 16
    assert list(compose(tmp_path, "regularizer=[]").get("regularizer") or {}) == []


def test_every_regularizer_at_once(tmp_path):
    names = [r for r in choices("regularizer") if r != "none"]
    cfg = compose(tmp_path, f"regularizer=[{','.join(names)}]", "model=mlp", "data=gaussians")
    validate_config(cfg)
    module = build_module(cfg, *build_models(cfg, (2,)))
    assert list(module.regularizers) == names
    assert len({type(r) for r in module.regularizers.values()}) == len(names)


@pytest.mark.parametrize("rule", choices("early_stopping"))
def test_early_stopping_choice_instantiates(tmp_path, rule):
    node = compose(tmp_path, f"early_stopping={rule}").get("early_stopping")
    if rule == "none":
        assert not node or "_target_" not in node
        return
    callback = instantiate(node)
    assert type(callback).__name__ == "EarlyTermination"
    assert {"loss_plateau", "metric_plateau"} & set(callback.rules) and "divergence" in callback.rules
    # default: all the rules, and where the stop metric is measured its rule decides (the losses only without one).
    loss_plateau = callback.rules.get("loss_plateau")
    assert (loss_plateau is not None and loss_plateau.until_logged == "val/mmd") is (rule in ("default", "trend_v5"))
    if rule in ("default", "trend_v5"):
        assert set(callback.rules) == {"loss_plateau", "metric_plateau", "collapse", "divergence"}
        assert type(callback.rules["metric_plateau"]).__name__ == ("Trend" if rule == "default" else "LogLinearTrend")


@pytest.mark.parametrize("trainer", choices("trainer"))
def test_trainer_choice_instantiates(tmp_path, trainer):
    cfg = compose(tmp_path, f"trainer={trainer}")
    extra = {}
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # Build the same Trainer on the CPU (constructing it starts no process): every other setting is checked.
        extra["accelerator"] = "cpu"
        if "strategy" in cfg.trainer:
            assert "find_unused_parameters" not in cfg.trainer.strategy  # plain DDP: GANModule reduces the gradients
            with open_dict(cfg):
                cfg.trainer.strategy.process_group_backend = "gloo"
    built = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                        **extra)
    assert built.world_size == cfg.trainer.devices * cfg.trainer.get("num_nodes", 1)
    assert built.precision == str(cfg.trainer.precision)
    if "strategy" in cfg.trainer:
        assert type(built.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize("logger", choices("logger"))
def test_logger_choice_instantiates(tmp_path, monkeypatch, logger):
    cfg = compose(tmp_path, f"logger={logger}")
    if logger == "none":
        assert not cfg.get("logger") and build_loggers(cfg) == []
        return
    if logger in ("wandb", "mlflow"):  # optional extras: tested where installed (offline, under tmp_path)
        pytest.importorskip(logger)
        monkeypatch.setenv("WANDB_SILENT", "true")
    (built,) = build_loggers(cfg)
    built.log_metrics({"train/g_loss": 1.0}, step=1)
    built.finalize("success")
    if logger == "wandb":
        import wandb

        wandb.finish()
    if logger in ("wandb", "mlflow"):  # the offline run / the local store, under the run's output_dir
        assert (tmp_path / ("wandb" if logger == "wandb" else "mlflow.db")).exists()
    else:
        assert Path(built.log_dir).is_relative_to(tmp_path)


def test_several_loggers_at_once(tmp_path):
    loggers = build_loggers(compose(tmp_path, "logger=[csv,tensorboard]"))
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_experiment_choice_is_valid_and_builds(tmp_path, request, experiment):
    assert (CONF / "experiment" / f"{experiment}.yaml").read_text().startswith("# @package _global_")
    cfg = compose(tmp_path, f"experiment={experiment}")
    assert cfg.task_name == experiment
    if cfg.data._target_.split(".")[-1] not in EMBEDDED_DATA_CLASSES:  # e.g. experiment=mnist_cond
        with open_dict(cfg):
            cfg.data.root = str(request.getfixturevalue("shared_data"))
    validate_config(cfg)
    datamodule = build_datamodule(cfg)
    num_classes = conditioning_classes(cfg, datamodule)
    module = build_module(cfg, *build_models(cfg, tuple(datamodule.shape), num_classes), num_classes)
    assert isinstance(module, GANModule)
    assert module.num_classes == (datamodule.num_classes if cfg.model.get("conditional", False) else None)
    assert build_callbacks(cfg)


#: Config groups an experiment preset may choose or tune (``trainer`` is the machine's, not a preset's).
PRESET_GROUPS = ("model", "data", "loss", "regularizer", "early_stopping", "callbacks", "logger")


def touched_groups(experiment: str) -> list[str]:
    """The groups whose choice (``override /group: ...``) or settings (a top-level ``group:`` key) a preset sets."""
    import yaml

    text = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text()) or {}
    groups = {key for key in text if key in PRESET_GROUPS}
    for entry in text.get("defaults") or []:
        if isinstance(entry, dict):
            groups |= {key.replace("override", "").strip().strip("/") for key in entry} & set(PRESET_GROUPS)
    return sorted(groups)


#: Choices that only exist inside a sweep: OptunaPruning needs the trial that ``hparams_search=...`` and the
#: regan_optuna sweeper hand to each job (``optuna_trial.*``, ``pruner``); tests/test_sweep.py builds it there.
SWEEP_ONLY = {("callbacks", "optuna_pruning")}
PRESET_CASES = [(e, g, c) for e in choices("experiment") for g in touched_groups(e) for c in choices(g)
                if (g, c) not in SWEEP_ONLY]


@pytest.mark.parametrize("experiment, group, choice", PRESET_CASES)
def test_every_preset_composes_with_every_choice_of_the_groups_it_touches(tmp_path, experiment, group, choice):
    """``regan-train experiment=X group=choice`` composes and builds (no training), e.g. experiment=ring
    regularizer=l2, although the preset tunes regularizer.r1."""
    cfg = compose(tmp_path, f"experiment={experiment}", f"{group}={choice}")
    drop_unselected(cfg)
    validate_config(cfg)
    datamodule = build_datamodule(cfg, validate=cfg.data._target_.split(".")[-1] in EMBEDDED_DATA_CLASSES)
    shape = tuple(datamodule.shape)
    model = {"MLPGenerator": "mlp", "DCGANGenerator": "dcgan", "ResNetGenerator": "resnet"}[
        cfg.model.generator._target_.rsplit(".", 1)[-1]]
    if model_fits(model, shape):
        module = build_module(cfg, *build_models(cfg, shape))
        assert isinstance(module, GANModule)
    callbacks = build_callbacks(cfg)
    if group == "callbacks":
        assert len([cb for cb in callbacks if type(cb).__name__ != "EarlyTermination"]) >= 1
    build_loggers(cfg)


def test_a_preset_tuning_an_unchosen_entry_composes(tmp_path):
    cfg = compose(tmp_path, "experiment=ring", "regularizer=l2", "early_stopping=plateau", "callbacks=[summary]")
    assert drop_unselected(cfg) == ["regularizer.r1", "callbacks.fid", "callbacks.samples"]
    validate_config(cfg)
    assert list(build_module(cfg, *build_models(cfg, (2,))).regularizers) == ["l2"]
    names = [type(cb).__name__ for cb in build_callbacks(cfg)]
    assert names == ["ModeCoverageMonitor", "EarlyTermination", "RunSummary"]


def test_callbacks_are_removable_from_the_command_line(tmp_path):
    cfg = compose(tmp_path, "~callbacks.fid", "~callbacks.samples", "~callbacks.overfitting")
    names = [type(cb).__name__ for cb in build_callbacks(cfg)]
    assert names == ["EarlyTermination", "ModelCheckpoint", "BestGenerator", "RunSummary", "GStepProgressBar"]
    checkpoint = next(cb for cb in build_callbacks(cfg) if type(cb).__name__ == "ModelCheckpoint")
    assert checkpoint.monitor is None  # no FID: last.ckpt only


def test_command_line_choices_override_an_experiment(tmp_path):
    cfg = compose(tmp_path, "experiment=ring", "regularizer=[r1,l2]", "seed=3")
    assert list(cfg.regularizer) == ["r1", "l2"] and cfg.regularizer.r1.weight == 0.1  # the preset's R1 weight
    assert cfg.seed == cfg.data.seed == cfg.module.seed == 3


@pytest.mark.parametrize("search", group_options("hparams_search"))
def test_hparams_search_choice_composes_with_a_valid_search_space(tmp_path, search):
    cfg = compose(tmp_path, f"hparams_search={search}", hydra=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")
    assert cfg.optimized_metric in SUMMARY_METRICS
    sweeper = cfg.hydra.sweeper
    get_class(sweeper._target_)  # the sweeper plugin is installed
    assert sweeper.direction == "minimize"
    assert sweeper.params
    for key in sweeper.params:  # a typo in the search space would otherwise add a new, unused key
        assert OmegaConf.select(cfg, str(key), default="<missing>") != "<missing>", f"{key} is not in the config"


@pytest.mark.parametrize("launcher", group_options("hydra/launcher"))
def test_launcher_choice_composes_and_resolves(tmp_path, launcher):
    # slurm_gpu takes its nodes / GPUs from the trainer: resolve it against a multi-node DDP trainer.
    cfg = compose(tmp_path, f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                  hydra=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    get_class(launcher_cfg["_target_"])  # the launcher plugin is installed
    if launcher == "slurm_gpu":
        assert launcher_cfg["_target_"].endswith("SlurmLauncher")
        assert launcher_cfg["nodes"] == 2 and launcher_cfg["tasks_per_node"] == launcher_cfg["gpus_per_node"] == 4


@pytest.mark.slow
def test_wheel_ships_the_configs_and_finds_them_installed(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo)],
                   check=True, timeout=600)
    wheel = next(tmp_path.glob("lightning_regan-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "lightning_regan/conf/train.yaml" in names
        expected = {f"lightning_regan/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
        assert expected <= names, sorted(expected - names)
        site = tmp_path / "site"
        zf.extractall(site)
    # From the unpacked wheel (not the checkout): config_dir() is the shipped copy and composes.
    code = ("from lightning_regan.config import compose_config, config_dir; print(config_dir()); "
            "print(compose_config(['experiment=ring', 'output_dir=x']).task_name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1"), check=True).stdout.split()
    assert out[-2:] == [str(site / "lightning_regan" / "conf"), "ring"]


def test_a_collapse_setting_left_without_its_rule_is_dropped_and_trend_builds_it(tmp_path):
    # A preset tuning the collapse rule composes with an early_stopping choice that has no collapse rule.
    cfg = compose(tmp_path, "early_stopping=fid", "+early_stopping.rules.collapse.patience=3")
    assert drop_unselected(cfg) == ["early_stopping.rules.collapse"]
    early = next(cb for cb in build_callbacks(cfg) if type(cb).__name__ == "EarlyTermination")
    assert "collapse" not in early.rules
    for choice in ("trend", "default"):  # the study's rule (default) and the same without the loss fallback (trend)
        cfg = compose(tmp_path, f"early_stopping={choice}")
        assert drop_unselected(cfg) == []
        early = next(cb for cb in build_callbacks(cfg) if type(cb).__name__ == "EarlyTermination")
        collapse, trend = early.rules["collapse"], early.rules["metric_plateau"]
        assert type(collapse).__name__ == "Collapse" and trend.tolerance == 0.05 and collapse.min_recall == 0.1
        assert type(trend).__name__ == "Trend" and trend.patience == 0.4 and trend.finetune_patience == 0.35 and trend.min_evaluations == 8
        assert ("loss_plateau" in early.rules) is (choice == "default")
    assert early.rules["loss_plateau"].until_logged == "val/mmd"
