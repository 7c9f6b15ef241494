"""Branches with the reference exchange reproduce the monolithic model; placements and plans are sound."""

import pytest
import timm
import torch
from conftest import randomize_, small_kwargs
from torch import nn

from decnn.models import ChannelShuffle, DecoupledModelError, count_params, model_names
from decnn.partition import (
    Placement,
    exchange_plans,
    extract_branch,
    extract_branches,
    local_exchange,
    run_branches_locally,
)


def _placements(groups: int) -> list[Placement]:
    even = [Placement.even(groups, n) for n in (1, 2, 4) if groups % n == 0]
    if groups < 4:
        return even
    # Uneven (a stronger device takes more groups) and non-contiguous.
    uneven = Placement(groups, (tuple(range(groups - 1)), (groups - 1,)))
    interleaved = Placement(groups, (tuple(range(0, groups, 2)), tuple(range(1, groups, 2))))
    balanced = Placement.balanced(groups, 3)  # 2/1/1: the default for 3 devices
    return [*even, uneven, interleaved, balanced]


def _case(name: str, groups: int, placement: Placement):
    """Uneven placements of ResNet-34 (ResNet-18's blocks, deeper) and of ResNet-50 G8 (slow: its grouped
    convolutions) repeat what ResNet-18, the VGG and ResNet-50 G2/G4 check fast."""
    n = placement.num_devices
    uneven = groups % n != 0 or placement.as_lists() != Placement.even(groups, n).as_lists()
    repeated = name == "decnn_resnet34" or (name == "decnn_resnet50" and groups == 8)
    marks = [pytest.mark.slow] if repeated and uneven else []
    return pytest.param(name, groups, placement, marks=marks, id=f"{name}-g{groups}-{placement.as_lists()}")


CASES = [_case(name, groups, placement) for name in model_names() for groups in (2, 4, 8)
         for placement in _placements(groups)]


@pytest.mark.parametrize("name, groups, placement", CASES)
def test_branches_reproduce_monolithic_logits(name, groups, placement, rng):
    model = randomize_(timm.create_model(name, groups=groups, width=0.5, num_classes=10, **small_kwargs(name)))
    x = torch.randn(3, 3, 32, 32, generator=rng)
    with torch.no_grad():
        expected = model(x)
        got = run_branches_locally(extract_branches(model, placement), x)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("placement", [Placement.even(4, 2), Placement.even(4, 4), Placement(4, ((0, 1, 2), (3,)))])
def test_branches_hold_only_their_share_of_weights(placement):
    model = timm.create_model("decnn_resnet34")
    branches = extract_branches(model, placement)
    total = count_params(model)
    # Nothing is replicated: the stem, every conv and the classifier are sliced (the fc bias lives on device 0).
    assert sum(count_params(b) for b in branches) == total
    for branch, groups in zip(branches, placement.devices):
        share = total * len(groups) / placement.groups
        assert abs(count_params(branch) - share) <= model.num_classes


def test_branch_forward_with_exchange_callback_matches(rng):
    """Branch.forward drives the same computation through an exchange callback (one device, identity)."""
    model = randomize_(timm.create_model("decnn_resnet18", width=0.5, num_classes=10))
    branch = extract_branch(model, Placement.even(4, 1), 0)
    x = torch.randn(2, 3, 32, 32, generator=rng)
    shuffled = []

    def exchange(i, a):
        shuffled.append(i)
        return local_exchange([branch.plans[i]], [a])[0]

    with torch.no_grad():
        assert torch.allclose(branch(x, exchange, reduce=lambda partial: partial), model(x), atol=1e-5)
    assert shuffled == [0, 1, 2]


@pytest.mark.parametrize("placement", [Placement.even(4, 2), Placement(4, ((0, 3), (1,), (2,)))])
@pytest.mark.parametrize("shuffle", ["channel", "random"])
def test_exchange_plan_realises_any_permutation(placement, shuffle, rng):
    channels = 24
    perm = ChannelShuffle(channels, 4).permutation if shuffle == "channel" else torch.randperm(channels, generator=rng)
    x = torch.randn(2, channels, 3, 3, generator=rng)
    local = [x[:, placement.local_channels(channels, d)] for d in range(placement.num_devices)]
    received = local_exchange(exchange_plans(perm, placement), local)
    for d, got in enumerate(received):
        assert torch.equal(got, x[:, perm][:, placement.local_channels(channels, d)])


def test_even_channel_shuffle_sends_equal_slices_to_every_device():
    plans = exchange_plans(ChannelShuffle(96, 4).permutation, Placement.even(4, 2))
    for plan in plans:
        assert plan.send_splits == [24, 24] and plan.recv_splits == [24, 24]
        assert plan.channels_sent == 24


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Placement.even(4, 3), r"3 devices cannot share 4 groups evenly; use one of \[1, 2, 4\]"),
        (lambda: Placement.balanced(4, 5), r"4 groups split over 1 to 4 devices, not 5"),
        (lambda: Placement(4, ((0, 1), (1, 2, 3))), "exactly one device"),
        (lambda: Placement(4, ((0, 1), (2,))), "exactly one device"),
        (lambda: Placement(4, ((0, 1, 2, 3), ())), "at least one group"),
        (lambda: Placement.parse(4, "0,1;2,3"), "cannot parse placement"),
    ],
)
def test_bad_placements_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("groups", [4, 8])
def test_balanced_placement_fits_any_device_count(groups):
    for n in range(1, groups + 1):
        sizes = [len(dev) for dev in Placement.balanced(groups, n).devices]
        assert len(sizes) == n and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        if groups % n == 0:
            assert Placement.balanced(groups, n) == Placement.even(groups, n)
    assert Placement.balanced(8, 3).as_lists() == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_placement_parse_uneven():
    assert Placement.parse(4, "0,1,2/3").as_lists() == [[0, 1, 2], [3]]


def test_dense_conv_between_shuffles_is_rejected():
    model = timm.create_model("decnn_resnet18", width=0.5)
    model.segments[1][0].conv1 = nn.Conv2d(48, 64, 3, 2, 1, bias=False)
    with pytest.raises(DecoupledModelError, match=r"segments\.1\.0\.conv1 has groups=1, but the model is split into 4"):
        extract_branch(model, Placement.even(4, 2), 0)


def test_placement_for_other_group_count_is_rejected():
    with pytest.raises(ValueError, match="placement is for 8 groups, the model has 4"):
        extract_branch(timm.create_model("decnn_resnet18"), Placement.even(8, 2), 0)
