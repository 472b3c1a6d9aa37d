"""Every choice of every config group composes (Hydra compose API) and instantiates.

The choices are read from conf/<group>/, so a new config file is tested without touching this file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_regan import GANModule
from lightning_regan.cli.train import build_callbacks, build_datamodule, build_models, build_module, validate_config
from lightning_regan.config import compose_config, config_dir
from lightning_regan.data import DatasetError, DatasetNotFoundError
from lightning_regan.losses import AdversarialLoss
from lightning_regan.regularizers import Regularizer

CONF = config_dir()
EMBEDDED_DATA = {"digits", "gaussians", "gaussians_grid"}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose(tmp_path: Path, *overrides: str, hydra: bool = False) -> DictConfig:
    cfg = compose_config([*overrides, f"output_dir={tmp_path}"], return_hydra_config=hydra)
    return cfg


def test_config_dir_holds_the_root_config_and_every_group_of_the_contract():
    assert (CONF / "train.yaml").is_file()
    for group in ("model", "data", "loss", "regularizer", "early_stopping", "trainer", "logger", "experiment",
                  "hparams_search", "hydra/launcher"):
        assert choices(group), f"conf/{group}/ is empty"
    assert {"mlp", "dcgan", "resnet"} <= set(choices("model"))
    assert {"gaussians", "digits", "mnist", "fashion_mnist", "cifar10", "image_folder"} <= set(choices("data"))
    assert {"none", "l1", "l2", "r1", "r2", "wgan_gp", "lecam"} <= set(choices("regularizer"))
    assert {"none", "plateau", "fid", "default"} <= set(choices("early_stopping"))
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(choices("trainer"))
    assert {"csv", "tensorboard"} <= set(choices("logger"))


def test_default_config_is_valid_and_builds_everything(tmp_path):
    cfg = compose(tmp_path)
    validate_config(cfg)
    datamodule = build_datamodule(cfg)
    generator, discriminator = build_models(cfg, tuple(datamodule.shape))
    module = build_module(cfg, generator, discriminator)
    assert isinstance(module, GANModule) and list(module.regularizers) == ["r1"]
    names = [type(cb).__name__ for cb in build_callbacks(cfg, datamodule)]
    assert names == ["FIDMonitor", "EarlyTermination", "SampleGrid", "ModelCheckpoint", "RunSummary"]


@pytest.mark.parametrize("model", choices("model"))
def test_model_choice_builds_g_and_d_for_its_data(tmp_path, model):
    extra = ["data.image_size=32"] if model == "resnet" else []
    cfg = compose(tmp_path, f"model={model}", *extra)
    shape = tuple(build_datamodule(cfg).shape)
    generator, discriminator = build_models(cfg, shape)
    z = torch.randn(3, cfg.model.latent_dim)
    x = generator(z)
    assert tuple(x.shape) == (3, *shape)
    assert tuple(discriminator(x).shape) == (3,)


def test_spectral_norm_option_parametrizes_d(tmp_path):
    cfg = compose(tmp_path, "model=mlp", "data=gaussians", "model.spectral_norm=true")
    _, discriminator = build_models(cfg, (2,))
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in discriminator.modules())


@pytest.mark.parametrize("data", choices("data"))
def test_data_choice_instantiates_and_checks_its_source(tmp_path, data):
    cfg = compose(tmp_path, f"data={data}")
    assert cfg.fid.feature_extractor in ("inception", "classifier", "identity")
    if data in EMBEDDED_DATA:
        datamodule = build_datamodule(cfg)
        assert len(tuple(datamodule.shape)) in (1, 3)
        return
    with open_dict(cfg):
        cfg.data.root = str(tmp_path / "no-such-folder")
    with pytest.raises((DatasetNotFoundError, DatasetError), match="data.root"):
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


@pytest.mark.parametrize("rule", choices("early_stopping"))
def test_early_stopping_choice_instantiates(tmp_path, rule):
    node = compose(tmp_path, f"early_stopping={rule}").get("early_stopping")
    if rule == "none":
        assert not node or "_target_" not in node
        return
    callback = instantiate(node)
    assert type(callback).__name__ == "EarlyTermination"
    assert any(getattr(callback, name) is not None for name in ("loss_plateau", "fid_plateau", "divergence"))


@pytest.mark.parametrize("trainer", choices("trainer"))
def test_trainer_choice(tmp_path, trainer):
    cfg = compose(tmp_path, f"trainer={trainer}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # No GPU here: check what it asks for instead of building it.
        assert cfg.trainer.precision == "bf16-mixed"
        if "strategy" in cfg.trainer:
            assert cfg.trainer.strategy.find_unused_parameters is True
        return
    built = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    assert built.world_size == cfg.trainer.devices * cfg.trainer.get("num_nodes", 1)


@pytest.mark.parametrize("logger", choices("logger"))
def test_logger_choice_instantiates(tmp_path, logger):
    node = compose(tmp_path, f"logger={logger}").get("logger")
    if logger == "none":
        assert not node
        return
    built = instantiate(node)
    built.log_metrics({"train/g_loss": 1.0}, step=1)
    built.finalize("success")
    assert Path(built.log_dir).is_relative_to(tmp_path)


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_experiment_choice_is_valid_and_builds(tmp_path, experiment):
    cfg = compose(tmp_path, f"experiment={experiment}")
    validate_config(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, *build_models(cfg, tuple(datamodule.shape)))
    assert isinstance(module, GANModule)
    assert build_callbacks(cfg, datamodule)


def test_optuna_search_space_and_objective(tmp_path):
    cfg = compose(tmp_path, "hparams_search=optuna", hydra=True)
    assert cfg.optimized_metric == "best_fid"
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "minimize" and "regularizer.r1.weight" in sweeper.params
    assert str(cfg.hydra.mode).endswith("MULTIRUN")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm", "slurm_gpu"])
def test_launcher_choice_composes(tmp_path, launcher):
    extra = ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"] if launcher == "slurm_gpu" else []
    cfg = compose(tmp_path, f"hydra/launcher={launcher}", *extra, hydra=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=launcher != "slurm_gpu")
    assert launcher_cfg["_target_"].startswith("hydra_plugins.")
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.nodes == 2 and cfg.hydra.launcher.tasks_per_node == 4


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo)],
                   check=True, timeout=600)
    wheel = next(tmp_path.glob("lightning_regan-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lightning_regan/conf/train.yaml" in names
    assert {f"lightning_regan/conf/regularizer/{r}.yaml" for r in ("r1", "l2", "none")} <= names
