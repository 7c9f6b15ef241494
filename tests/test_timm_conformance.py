"""timm's own model expectations (its tests/test_models.py), checked for every ``timm.list_models("decnn_*")``.

Mirrored: forward, backward with a gradient for every parameter, default_cfg fields against the model,
forward_features / forward_head(pre_logits), reset_classifier(num_classes, global_pool) including
``reset_classifier(0, "")`` (the unpooled feature map, which timm asks of every model that is not one of its own
early-pooling classes), features_only through feature_info, forward_intermediates, TorchScript, torch.fx
tracing (forward and backward) and the fx graph scripted with TorchScript.
Inputs are small (32-96 px) and the VGG's fixed-size parts are shrunk where timm's default would not matter,
so that the whole file stays fast.
"""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import randomize_, small_kwargs
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from decnn.models import model_names
from decnn.partition import Placement, extract_branches, run_branches_locally

NAMES = model_names()
ONE_PER_FAMILY = list({timm.models.model_entrypoint(n).__module__: n for n in reversed(NAMES)}.values())
GRID_POOL = ("decnn_vgg16_bn",)  # an MLP head pools to a 7x7 grid: "avg" or "max" only (or "" without a head)


def small(name: str, **kwargs):
    return timm.create_model(name, width=0.5, **small_kwargs(name), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = small(name, num_classes=42).train()
    outputs = model(torch.randn(2, 3, 32, 32))
    outputs.mean().backward()
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_describes_the_model(name):
    model = small(name).eval()  # narrower, but with the default input size, classes and head
    cfg = model.default_cfg
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert torch.equal(model(x), pre_logits)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
        unpooled = small(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


@pytest.mark.parametrize("name", NAMES)
def test_a_classifier_needs_pooling(name):
    with pytest.raises(ValueError, match="num_classes=0"):
        small(name, num_classes=10, global_pool="")
    model = small(name, num_classes=0, global_pool="")
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(10)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier_sets_pooling_and_classes(name):
    model = small(name).eval()
    model.reset_classifier(5, "max" if name in GRID_POOL else "catavgmax")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        if name in GRID_POOL:  # the pooling to the MLP's grid
            got, expected = model.head_parts().pool(features), F.adaptive_max_pool2d(features, 7).flatten(1)
        else:
            got = model.forward_head(features, pre_logits=True)
            expected = torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1)
        assert torch.allclose(got, expected)
        assert model(x).shape == (2, 5) and model.num_classes == 5


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_branches_follow_a_reset_pooling(name):
    """The head's split is derived from the pooling, so a new global_pool still splits exactly."""
    model = small(name, num_classes=10)
    model.reset_classifier(10, "avgmax" if name not in GRID_POOL else "max")
    randomize_(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = run_branches_locally(extract_branches(model, Placement(4, ((0, 2), (1, 3)))), x)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_features_only_follows_feature_info(name):
    size = 96
    model = timm.create_model(name, features_only=True, width=0.5, **small_kwargs(name)).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, size, size))
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c
        assert o.shape[2] <= math.ceil(size / r) + 1 and o.shape[3] <= math.ceil(size / r) + 1


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = small(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [o.shape[1] for o in intermediates] == info.channels()
        for r, o in zip(info.reduction(), intermediates):
            assert o.shape[2] <= math.ceil(64 / r) + 1
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [torch.equal(a, b) for a, b in zip(last_two, intermediates[-2:])] == [True, True]


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_gives_the_same_output(name):
    with timm.set_scriptable(True):
        model = small(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def _fx(model, train: bool = False):
    tracer_kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions(),
                     "param_shapes_constant": True}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs).train(train)


@pytest.mark.parametrize("name", NAMES)
def test_fx_forward_and_backward(name):
    model = small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(next(iter(_fx(model)(x).values())), model(x))
    traced = _fx(small(name, num_classes=42), train=True)
    outputs = next(iter(traced(x).values()))
    outputs.mean().backward()
    assert outputs.shape == (2, 42)
    assert all(p.grad is not None for p in traced.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_fx_graph_scripts_with_torchscript(name):
    """timm scripts the fx graph: the annotations fx copies into its generated code must be real types."""
    with timm.set_scriptable(True):
        model = small(name).eval()
    x = torch.randn(1, 3, 32, 32)
    scripted = torch.jit.script(_fx(model))
    with torch.no_grad():
        assert torch.allclose(next(iter(scripted(x).values())), model(x), atol=1e-5)
