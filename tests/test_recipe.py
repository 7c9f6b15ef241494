"""The authors' recipe: ImageNet-style folder trees, configs/imagenet, the step schedule, decay and init."""

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from test_trainer import tiny_overrides

from decnn.common.checkpoint import save_checkpoint
from decnn.common.errors import ConfigError
from decnn.data import DatasetCorruptError, DatasetNotFoundError, ImageFolderTree, TinyImageNet, dataset_class
from decnn.inference.settings import InferConfig
from decnn.inference.spec import resolve_model
from decnn.models.reference import REFERENCE_ZOO
from decnn.train.builders import build_optimizer, build_scheduler, model_kwargs
from decnn.train.config import load_config
from decnn.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
IMAGENET_CONFIGS = sorted((REPO / "configs" / "imagenet").glob("*.yaml"))


def folder_tree(root: Path, classes=("n01", "n02", "n03"), per_class: int = 6) -> Path:
    """An ImageNet-style tree of solid-colour JPEGs of varied sizes (a class per colour)."""
    for split, n in (("train", per_class), ("val", 2)):
        for c, wnid in enumerate(classes):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                size = (40 + 8 * i, 48)
                Image.new("RGB", size, (80 * c, 255 - 80 * c, 40 * i)).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    return root


def test_folder_tree_serves_labelled_rgb_images(tmp_path):
    root = folder_tree(tmp_path / "imagenet")
    assert dataset_class(root) is ImageFolderTree
    val = ImageFolderTree(root, "val")
    assert (len(val), val.num_classes, val.classes) == (6, 3, ["n01", "n02", "n03"])
    image, label = val[2]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 40) and label == 1
    assert val.mean == timm.data.IMAGENET_DEFAULT_MEAN


def test_dataset_kind_follows_the_layout_on_disk(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "wnids.txt").write_text("n01\n")
    assert dataset_class(tmp_path / "tiny") is TinyImageNet
    with pytest.raises(DatasetNotFoundError, match=r"(?s)neither the Tiny-ImageNet layout.*nor an ImageNet-style"):
        dataset_class(tmp_path / "nothing")


def test_val_class_unknown_to_train_is_named(tmp_path):
    root = folder_tree(tmp_path / "imagenet")
    (root / "val" / "n99").mkdir()
    with pytest.raises(DatasetCorruptError, match=r"n99: class folder not in .*train"):
        ImageFolderTree(root, "val")


def test_trainer_trains_on_a_folder_tree_with_the_authors_recipe(tmp_path):
    root = folder_tree(tmp_path / "imagenet")
    recipe = ["optim.name=sgd", "optim.lr=0.01", "optim.nesterov=false", "optim.decay_norm_and_bias=true",
              "schedule.decay=step", "schedule.step_epochs=1", "schedule.warmup_epochs=0", "data.crop_pct=0.875",
              "augment.mixup_alpha=0", "augment.cutmix_alpha=0", "augment.randaugment=0"]
    cfg = load_config(overrides=[*tiny_overrides(root, tmp_path / "runs"), *recipe, "data.batch_size=6"])
    trainer = Trainer(cfg)
    assert trainer.model.num_classes == 3 and len(trainer.val_set) == 6
    metrics = trainer.step_epoch()
    assert 0 <= metrics["top1"] <= 100
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)  # lr / 10 after step_epochs
    # Its checkpoint tells inference to normalise as training did: ImageNet's statistics, not the model's
    # Tiny-ImageNet default.
    save_checkpoint(tmp_path / "best.pt", trainer.state_dict())
    trainer.close()
    spec = resolve_model(InferConfig(checkpoint=str(tmp_path / "best.pt"), mode="single"))
    assert (spec.mean, spec.std) == (tuple(ImageFolderTree.mean), tuple(ImageFolderTree.std))
    assert (spec.mean, spec.std) != (TinyImageNet.mean, TinyImageNet.std)


def test_step_schedule_divides_by_ten_every_step_epochs():
    cfg = load_config(overrides=["schedule.decay=step", "schedule.step_epochs=30", "schedule.epochs=90",
                                 "schedule.warmup_epochs=0", "optim.lr=0.01"])
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=2)
    rates = []
    for _ in range(180):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01) and rates[59] == pytest.approx(0.01)
    assert rates[60] == pytest.approx(0.001) and rates[120] == pytest.approx(0.0001)


@pytest.mark.parametrize("everything", [True, False])
def test_weight_decay_reaches_norms_and_biases_only_when_asked(everything):
    cfg = load_config(overrides=[f"optim.decay_norm_and_bias={str(everything).lower()}", "optim.weight_decay=1e-4"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = build_optimizer(cfg.optim, model).param_groups
    decayed = sum(p.numel() for g in groups if g["weight_decay"] for p in g["params"])
    assert decayed == (4 * 3 * 9 + 4 + 4 + 4 if everything else 4 * 3 * 9)


def test_init_is_the_authors_unless_zero_init_last_is_asked():
    default = timm.create_model("decnn_resnet18", width=0.25)
    assert all(torch.all(m.weight == 1) for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d))
    cfg = load_config(overrides=["model.name=decnn_resnet18", "model.zero_init_last=true", "model.width=0.25"])
    zeroed = timm.create_model(cfg.model.name, **model_kwargs(cfg.model, 10))
    assert all(torch.all(block.bn2.weight == 0) for seg in zeroed.segments for block in seg)


@pytest.mark.parametrize("path", IMAGENET_CONFIGS, ids=[p.stem for p in IMAGENET_CONFIGS])
def test_imagenet_configs_build_the_authors_models(path):
    cfg = load_config(path)
    assert model_kwargs(cfg.model, 1000) == REFERENCE_ZOO[path.stem][1] | {"num_classes": 1000}
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.data.batch_size) == (0.01, 0.9, 1e-4, 256)
    assert (cfg.schedule.epochs, cfg.schedule.decay, cfg.schedule.step_epochs) == (90, "step", 30)


def test_a_stem_for_the_vgg_is_a_clear_config_error(tmp_path):
    root = folder_tree(tmp_path / "imagenet")
    cfg = load_config(overrides=[*tiny_overrides(root, tmp_path / "runs"), "model.name=decnn_vgg16_bn"])
    with pytest.raises(ConfigError, match=r"decnn_vgg16_bn with .*unexpected keyword argument 'stem'"):
        Trainer(cfg)
