"""The model zoo: timm registration, plain-ResNet equivalence, golden counts, clear errors."""

import json

import pytest
import timm
import torch
import torchvision
from conftest import small_kwargs

from decnn.models import ChannelShuffle, count_flops, count_params, model_names
from decnn.models.stats import GOLDEN_PATH

TORCHVISION_TWIN = {name: name.removeprefix("decnn_") for name in model_names()}
PLAIN = {"groups": 1, "width": 1.0, "num_classes": 1000}
PLAIN_ARGS = {"decnn_vgg16_bn": {**PLAIN, "stem_width": 64}}  # the ResNets: the ImageNet stem


def test_registered_with_timm():
    assert set(TORCHVISION_TWIN) <= set(model_names())
    assert set(model_names()) <= set(timm.list_models())


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("size", [32, 64, 80])
def test_forward_any_input_size(name, size):
    model = timm.create_model(name, width=0.5, num_classes=7, **small_kwargs(name)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", model_names())
def test_plain_config_matches_torchvision_param_count(name):
    ours = timm.create_model(name, **PLAIN_ARGS.get(name, {**PLAIN, "stem": "imagenet"}))
    theirs = getattr(torchvision.models, TORCHVISION_TWIN[name])()
    assert count_params(ours) == count_params(theirs)


@pytest.mark.parametrize("name", model_names())
def test_golden_params_and_flops(name):
    golden = json.loads(GOLDEN_PATH.read_text())[name]
    model = timm.create_model(name)
    assert count_params(model) == golden["params"]
    assert count_flops(model, (1, 3, 64, 64)) == golden["flops_64"]


def test_paper_defaults_of_resnet34():
    model = timm.create_model("decnn_resnet34")
    assert (model.groups, model.width, model.num_classes) == (4, 1.5, 200)
    assert [s.channels for s in model.shuffles] == [96, 192, 384]  # after stages 1-3, widths 96/192/384/768
    assert model.fc.in_features == 768
    assert model.stem[0].groups == 1 and model.stem[0].kernel_size == (3, 3)  # dense "tiny" stem
    convs = [m for seg in model.segments for m in seg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.groups == 4 for c in convs)


def test_vgg_is_the_authors_x175_layout():
    model = timm.create_model("decnn_vgg16_bn", num_classes=1000)
    convs = [model.stem[0], *(m for seg in model.segments for m in seg if isinstance(m, torch.nn.Conv2d))]
    assert [c.out_channels for c in convs] == [96, 112, 224, 224, 448, 448, 448, 896, 896, 896, 896, 896, 512]
    assert [c.groups for c in convs] == [1] + [4] * 12
    assert [s.channels for s in model.shuffles] == [448, 896]  # after convs 5 and 9, as their block0/1/2
    assert (model.fc1.in_features, model.fc.in_features) == (512 * 7 * 7, 4096)


def test_shuffle_positions_are_configurable():
    model = timm.create_model("decnn_resnet18", shuffle_after=(1,))
    assert len(model.segments) == 2 and [s.channels for s in model.shuffles] == [192]


def test_channel_shuffle_is_its_permutation(rng):
    shuffle = ChannelShuffle(12, 4)
    x = torch.randn(2, 12, 3, 3, generator=rng)
    assert torch.equal(shuffle(x), x[:, shuffle.permutation])
    assert sorted(shuffle.permutation.tolist()) == list(range(12))
    assert shuffle.permutation[:3].tolist() == [0, 4, 8]  # new group 0 takes every 4th channel, from 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 1.3}, "not divisible by groups=4"),
        ({"groups": 0}, "groups must be >= 1"),
        ({"stem": "huge"}, "unknown stem 'huge'"),
        ({"shuffle_after": (3,)}, "stage indices must lie in 0..2"),
        ({"width": 0.0}, "width must be > 0"),
    ],
)
def test_impossible_configurations_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("decnn_resnet34", **kwargs)


def test_no_pretrained_weights_are_fetched():
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model("decnn_resnet34", pretrained=True)
