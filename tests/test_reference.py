"""The authors' zoo: decnn builds their models layer for layer, and `decnn convert` carries their weights over."""

import json
import re

import pytest
import timm
import torch
from conftest import randomize_
from reference_format import ReferenceResNet, ReferenceVGG, authors_shuffle
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from decnn.cli import main as cli
from decnn.common.checkpoint import load_model
from decnn.models import ChannelShuffle, count_flops, count_params
from decnn.models.reference import REFERENCE_ZOO, ReferenceFormatError, to_decnn_state_dict
from decnn.models.stats import GOLDEN_PATH

VGG_X175 = (96, 112, 224, 224, 448, 448, 448, 896, 896, 896, 896, 896, 512)
VGG_PLAIN = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def reference_model(arch: str) -> torch.nn.Module:
    """The authors' architecture ``arch`` in their format (tests/reference_format.py)."""
    resnets = {
        "resnet34": ((3, 4, 6, 3), 64, False, 1), "resnet34_s3_x15": ((3, 4, 6, 3), 96, False, 4),
        "resnet34_s3_x175": ((3, 4, 6, 3), 112, False, 4), "resnet50": ((3, 4, 6, 3), 64, True, 1),
        "resnet50_s3_addchannel": ((3, 4, 6, 3), 96, True, 4),
        "resnet50_s3_addchannel175": ((3, 4, 6, 3), 112, True, 4),
    }
    if arch in resnets:
        layers, base, bottleneck, groups = resnets[arch]
        return ReferenceResNet(layers, [base, 2 * base, 4 * base, 8 * base], bottleneck, groups)
    return ReferenceVGG(VGG_X175, groups=4) if arch.endswith("_v2") else ReferenceVGG(VGG_PLAIN, groups=1)


def _random_reference(arch: str, seed: int = 0) -> torch.nn.Module:
    """Random weights and random BN statistics, so that every tensor's place matters."""
    model = randomize_(reference_model(arch), seed)
    return model.double()


def test_channel_shuffle_is_the_authors():
    x = torch.randn(2, 24, 3, 3)
    assert torch.equal(ChannelShuffle(24, 4)(x), authors_shuffle(x, 4))
    assert ChannelShuffle(12, 4).permutation[:3].tolist() == [0, 4, 8]  # output group 0: every 4th, from 0


def _shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in model.state_dict().values()]


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if "vgg" in a else a for a in REFERENCE_ZOO]  # VGG: 130M params
)
def test_zoo_matches_the_reference_layer_for_layer(arch):
    name, kwargs = REFERENCE_ZOO[arch]
    assert _shapes(timm.create_model(name, **kwargs)) == _shapes(reference_model(arch))


@pytest.mark.slow
@pytest.mark.parametrize("arch", REFERENCE_ZOO)
def test_reference_zoo_golden_params_and_flops(arch):
    golden = json.loads(GOLDEN_PATH.read_text())["reference_zoo_224"][arch]
    name, kwargs = REFERENCE_ZOO[arch]
    model = timm.create_model(name, **kwargs)
    assert count_params(model) == golden["params"] == count_params(reference_model(arch))
    assert count_flops(model, (1, 3, 224, 224)) == golden["flops_224"]


@pytest.mark.parametrize("wrapped", [True, False])
def test_convert_carries_the_authors_weights_over(tmp_path, wrapped):
    """Their checkpoint ({'arch', 'state_dict' with DataParallel's prefix}, or a bare state dict with --arch)
    becomes a decnn checkpoint whose model gives the same logits in float64."""
    arch = "resnet34_s3_x15" if wrapped else "resnet50_s3_addchannel"
    theirs = _random_reference(arch)
    state = {f"module.{k}" if wrapped else k: v.float() for k, v in theirs.state_dict().items()}
    saved = {"epoch": 90, "arch": arch, "state_dict": state, "best_prec1": torch.tensor(69.2)} if wrapped else state
    torch.save(saved, tmp_path / "ref.pth")
    argv = ["convert", str(tmp_path / "ref.pth"), str(tmp_path / "out.pt"), *([] if wrapped else ["--arch", arch])]
    with pytest.raises(SystemExit) as done:
        cli(argv)
    assert done.value.code == 0
    ours, ckpt = load_model(tmp_path / "out.pt")
    kwargs = dict(ckpt["model_kwargs"])
    overlay = kwargs.pop("pretrained_cfg_overlay")
    assert (ckpt["model_name"], kwargs) == (REFERENCE_ZOO[arch][0], REFERENCE_ZOO[arch][1])
    # Trained on ImageNet: inference must normalise with ImageNet's statistics, not Tiny-ImageNet's.
    assert (tuple(ours.pretrained_cfg["mean"]), tuple(ours.pretrained_cfg["std"])) == \
        (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) == (tuple(overlay["mean"]), tuple(overlay["std"]))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert (ours.double()(x) - theirs.double()(x)).abs().max().item() <= 1e-9


@pytest.mark.parametrize("groups", [1, 4])
def test_vgg_weights_convert_with_the_same_logits(groups):
    ours = timm.create_model("decnn_vgg16_bn", groups=groups, width=0.375, stem_width=32, num_features=64,
                             mlp_hidden=64, num_classes=10).double().eval()
    widths = [m.out_channels for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    theirs = randomize_(ReferenceVGG(widths, hidden=64, groups=groups, num_classes=10)).double()
    ours.load_state_dict(to_decnn_state_dict(theirs.state_dict(), ours))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-9


def test_plain_vgg_in_torchvision_format_converts():
    """The authors' plain vgg16_bn is torchvision's: ``features.i`` and ``classifier.i``."""
    import torchvision

    ours = timm.create_model("decnn_vgg16_bn", groups=1, width=0.25, stem_width=16, num_features=128,
                             mlp_hidden=32, num_classes=10).double().eval()
    theirs = torchvision.models.vgg.VGG(
        torchvision.models.vgg.make_layers([16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M",
                                            128, 128, 128, "M"], batch_norm=True), num_classes=10)
    theirs.classifier[0], theirs.classifier[3] = torch.nn.Linear(128 * 49, 32), torch.nn.Linear(32, 32)
    theirs.classifier[6] = torch.nn.Linear(32, 10)
    theirs = randomize_(theirs).double()
    ours.load_state_dict(to_decnn_state_dict(theirs.state_dict(), ours))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-9


@pytest.mark.parametrize(
    "saved, argv, message",
    [
        ("wrong-arch", [], r"conv1\.weight \(96, 3, 7, 7\) does not fit stem\.0\.weight \(112, 3, 7, 7\)"),
        ("bare", [], "does not name its architecture: give --arch"),
        ("list", [], "holds a list, not a state dict"),
        ("wrapped", ["--arch", "resnet34_s3_x175"], "holds a resnet34_s3_x15, not the --arch resnet34_s3_x175"),
        ("missing", [], "^error: no checkpoint at .*ref\\.pth$"),
    ],
)
def test_bad_reference_checkpoints_give_clear_errors(tmp_path, capsys, saved, argv, message):
    state = reference_model("resnet34_s3_x15").state_dict()
    content = {
        "wrong-arch": {"arch": "resnet34_s3_x175", "state_dict": state},
        "bare": state,
        "list": [1, 2],
        "wrapped": {"arch": "resnet34_s3_x15", "state_dict": state},
    }
    path = tmp_path / "ref.pth"
    if saved != "missing":
        torch.save(content[saved], path)
    with pytest.raises(SystemExit) as done:
        cli(["convert", str(path), str(tmp_path / "out.pt"), *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err, re.M), err
    assert err.startswith("error: ") and "example: decnn convert" in err
    assert not (tmp_path / "out.pt").exists()


def test_state_dict_of_another_model_is_rejected():
    ours = timm.create_model("decnn_resnet34", **REFERENCE_ZOO["resnet34_s3_x15"][1])
    state = reference_model("resnet34_s3_x15").state_dict()
    del state["layer4.2.bn2.running_var"]
    with pytest.raises(ReferenceFormatError, match=r"lacks 1 tensors of the model, e\.g\. segments\.3\.2\.bn2"):
        to_decnn_state_dict(state, ours)
