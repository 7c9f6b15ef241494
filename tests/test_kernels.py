"""The kernel measurement's alternatives compute exactly what the grouped convolution computes."""

import pytest
import timm
import torch
from conftest import randomize_
from torch import nn

from decnn.bench.kernels import PerGroupConv, block_diagonal, grouped_shapes
from decnn.inference.optimize import prepare_for_inference
from decnn.partition import Placement, extract_branch


@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 2), (1, 2, 4), (3, 2, 3)])
def test_block_diagonal_and_per_group_convs_equal_the_grouped_conv(rng, kernel, stride, groups):
    conv = nn.Conv2d(6 * groups, 4 * groups, kernel, stride, kernel // 2, groups=groups)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=rng))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=rng))
        x = torch.randn(2, 6 * groups, 9, 9, generator=rng)
        expected = conv(x)
        for other in (block_diagonal(conv), PerGroupConv(conv)):
            assert (other(x) - expected).abs().max() <= 1e-4


def test_grouped_shapes_are_the_branchs_grouped_convs_with_their_input_sizes():
    model = randomize_(timm.create_model("decnn_resnet18", width=0.5))
    branch = prepare_for_inference(extract_branch(model, Placement.even(4, 2), 0))
    shapes = grouped_shapes(branch, 32)
    assert shapes and all(conv.groups == 2 for conv in shapes.values())  # the branch holds 2 of the 4 groups
    sizes = {shape[5] for shape in shapes}
    assert {16, 8, 4} <= sizes and max(sizes) <= 32  # every stage's resolution: the hooks saw real inputs
