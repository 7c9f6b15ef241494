"""A decoupled model read for a spatial split (MoDNN's row bands, Coates et al.'s tiles): its features traced
into pieces between the layers that read a window of another device's pixels, and its head.

torch.fx traces ``forward_features`` (a channel shuffle stays one per-pixel step); batch norms are folded into
the convolutions before them, as every mode's preparation does. Each layer is a convolution or pool that
reads a window (:class:`decnn.wire.spatial.Window`), or a per-pixel layer (batch norm, activations, additions,
the shuffle, 1x1 convolutions of stride 1); anything else is refused with its name. A piece ends before a
layer that reads a window of a map the same piece computed; in a piece, windowed layers read buffers that
the executor has padded and completed with the halo, so their own padding is set to 0. The pieces are
GraphModules that share the model's (folded) weights; every device runs them on its own tiles.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval

from decnn.distributed.transport import TorchTensors
from decnn.execution.spatial import LocalGroup, SpatialStep
from decnn.models.decoupled import ChannelShuffle, verify_decoupled
from decnn.wire.spatial import Layout, Piece, SpatialError, Tiling, Use, Window, compile_programs

__all__ = ["SpatialModel", "run_spatial_locally", "spatial_model"]

PER_PIXEL_MODULES = (nn.BatchNorm2d, nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid,
                     nn.LeakyReLU, nn.Dropout, ChannelShuffle)
PER_PIXEL_FUNCTIONS = (operator.add, operator.iadd, operator.mul, torch.add, torch.mul, torch.relu, F.relu)
PER_PIXEL_METHODS = ("add", "add_", "mul", "relu", "relu_", "contiguous")
LINEAR_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity)


class SpatialModel:
    """A model's features as pieces (``pieces[i](*inputs) -> tuple``) that hold no image size, their
    :meth:`layout` for an image size, and the head: a linear ``pool`` and the ``classifier`` (its linear layer
    and tail) that runs on the sum of the devices' pooled tiles."""

    def __init__(self, features: fx.GraphModule, cut: list[list[fx.Node]], windows: dict, pool: nn.Module,
                 classifier: nn.Module):
        self.features, self.windows, self.pool, self.classifier = features, windows, pool, classifier
        piece_of = {n: i for i, nodes in enumerate(cut) for n in nodes}
        nodes = list(features.graph.nodes)
        image, output = nodes[0], nodes[-1]
        piece_of[image] = -1
        self.image, self.result = image, output.args[0]
        # The maps that cross from one piece to another (the image and the features too) are the layout's tensors.
        self.tensors = [n for n in nodes if n is image or n is self.result
                        or any(u is not output and piece_of[u] != piece_of[n] for u in n.users)]
        self.inputs: list[dict[tuple, fx.Node]] = []  # per piece: (map, window) -> the layer that reads it so
        self.outputs: list[list[fx.Node]] = []  # per piece: the maps it computes for later pieces
        self.pieces = []
        modules = dict(features.named_modules())
        for i, members in enumerate(cut):
            reads = {}
            for node in members:
                for inp in node.all_input_nodes:
                    if piece_of[inp] != i:
                        reads.setdefault((inp, windows[node]), node)
            self.inputs.append(reads)
            self.outputs.append([n for n in members if n in self.tensors])
            self.pieces.append(_piece_graph(members, list(reads), self.outputs[-1], windows, modules))

    @torch.no_grad()
    def layout(self, image_size: tuple[int, int]) -> Layout:
        """The pieces' maps for ``image_size`` (height, width) images (one forward pass at batch 1)."""
        device = next(self.features.parameters()).device
        ShapeProp(self.features).propagate(torch.zeros(1, 3, *image_size, device=device))
        tensor = {n: t for t, n in enumerate(self.tensors)}
        pieces = []
        for reads in self.inputs:
            uses = tuple(Use(tensor[inp]) if window is None else Use(tensor[inp], window, _shape(node)[1:])
                         for (inp, window), node in reads.items())
            pieces.append(uses)
        for node, window in self.windows.items():
            sizes = {_shape(n)[1:] for n in (node, *node.all_input_nodes)}
            if window is None and len(sizes) > 1:
                raise SpatialError(f"{node.target} combines maps of sizes {sorted(sizes)}: a per-pixel layer "
                                   "needs maps of one size")
        outputs = [tuple(tensor[n] for n in out) for out in self.outputs]
        return Layout(tuple(_shape(n) for n in self.tensors),
                      tuple(Piece(uses, out) for uses, out in zip(pieces, outputs)), tensor[self.result])


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, ChannelShuffle) or super().is_leaf_module(m, name)


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def spatial_model(model: nn.Module) -> SpatialModel:
    """``model`` (a decoupled model in eval mode; its weights stay shared) read for a spatial split;
    SpatialError for a layer or head a spatial split cannot cut."""
    verify_decoupled(model)
    head = model.head_parts()
    if not _linear(head.pool):
        raise SpatialError(f"{type(model).__name__}'s head pools with {head.pool}, which is not linear: a spatial "
                           "split sums the devices' pooled tiles (use global_pool='avg')")
    root = _Features(model)
    features = fx.GraphModule(root, _Tracer().trace(root))
    with torch.no_grad():
        _fold_batch_norms(features)
    modules = dict(features.named_modules())
    windows = {n: _window(n, modules) for n in features.graph.nodes if n.op not in ("placeholder", "output")}
    return SpatialModel(features, _cut(features, windows), windows, head.pool,
                        nn.Sequential(head.linear, head.tail).eval())


def _linear(pool: nn.Module) -> bool:
    """Whether the head's pooling is linear in the feature map (an average), so pooled tiles add up."""
    if isinstance(pool, SelectAdaptivePool2d):
        return pool.pool_type == "avg"
    if isinstance(pool, nn.Sequential):
        return all(_linear(m) for m in pool)
    return isinstance(pool, LINEAR_POOLS)


def _fold_batch_norms(gm: fx.GraphModule) -> None:
    """Fold every batch norm that only follows a convolution into it (eval mode)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        conv = node.args[0]
        if not (isinstance(conv, fx.Node) and conv.op == "call_module" and isinstance(modules[conv.target], nn.Conv2d)
                and len(conv.users) == 1):
            continue
        fused = fuse_conv_bn_eval(modules[conv.target], modules[node.target])
        parent, _, name = conv.target.rpartition(".")
        setattr(gm.get_submodule(parent), name, fused)
        modules[conv.target] = fused
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _window(node: fx.Node, modules: dict) -> Window | None:
    """How ``node`` reads its input's pixels: a Window, or None for a per-pixel layer."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            return _conv_or_pool_window(node.target, m)
        if isinstance(m, PER_PIXEL_MODULES):
            return None
        kind = type(m).__name__
    elif node.op == "call_function" and node.target in PER_PIXEL_FUNCTIONS:
        return None
    elif node.op == "call_method" and node.target in PER_PIXEL_METHODS:
        return None
    else:
        kind = f"{node.op} {getattr(node.target, '__name__', node.target)}"
    raise SpatialError(f"{node.target} ({kind}): a spatial split knows convolutions, pools and per-pixel layers, "
                       "not how this one reads its input's pixels")


def _conv_or_pool_window(name: str, m: nn.Module) -> Window | None:
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise SpatialError(f"{name}: padding {m.padding!r} ({m.padding_mode}); a spatial split pads with zeros")
        dilation, fill = _pair(m.dilation), 0.0
    elif isinstance(m, nn.MaxPool2d):
        if m.ceil_mode:
            raise SpatialError(f"{name}: ceil_mode=True pools are not supported by a spatial split")
        dilation, fill = _pair(m.dilation), float("-inf")
    else:
        if m.ceil_mode or m.divisor_override or (not m.count_include_pad and m.padding):
            raise SpatialError(f"{name}: an average pool with ceil_mode, a divisor override or padding left out of "
                               "the count cannot be cut by a spatial split")
        dilation, fill = (1, 1), 0.0
    k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    extent = tuple(d * (kk - 1) + 1 for d, kk in zip(dilation, k))
    if extent == (1, 1) and s == (1, 1) and p == (0, 0):
        return None  # a 1x1 convolution of stride 1 is per-pixel
    return Window(extent, s, p, fill)


def _cut(gm: fx.GraphModule, windows: dict) -> list[list[fx.Node]]:
    """The layers in pieces: a new piece starts at a layer that reads a window of a map of the current one."""
    pieces: list[list[fx.Node]] = [[]]
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if windows[node] is not None and any(i in pieces[-1] for i in node.all_input_nodes):
            pieces.append([])
        pieces[-1].append(node)
    return pieces


def _shape(node: fx.Node) -> tuple[int, int, int]:
    return tuple(node.meta["tensor_meta"].shape[1:])


def _piece_graph(members: list[fx.Node], reads: list[tuple], outputs: list[fx.Node], windows: dict,
                 modules: dict) -> fx.GraphModule:
    """One piece as a GraphModule ``(*inputs) -> tuple of outputs`` (input i: ``reads[i]`` = (map, window));
    its windowed layers unpadded."""
    graph = fx.Graph()
    inputs = {read: graph.placeholder(f"x{i}") for i, read in enumerate(reads)}
    env: dict[fx.Node, fx.Node] = {}
    owned: dict[str, nn.Module] = {}
    for node in members:
        window = windows[node]
        env[node] = graph.node_copy(node, lambda a, window=window: env[a] if a in env else inputs[a, window])
        if node.op == "call_module":
            owned[node.target] = _unpadded(modules[node.target]) if window else modules[node.target]
    graph.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(owned, graph).eval()


def _unpadded(m: nn.Module) -> nn.Module:
    """A copy of a convolution or pool without padding (its weights shared): its input arrives padded."""
    c = copy.copy(m)
    c.padding = (0, 0) if isinstance(m, nn.Conv2d) else 0
    return c


@torch.no_grad()
def run_spatial_locally(spatial: SpatialModel, x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """The logits of a spatial split of normalised inputs ``x`` with every device a thread of this process
    (the reference transport): what a distributed run must reproduce."""
    programs = compile_programs(spatial.layout(tuple(x.shape[-2:])), tiling)
    no_grad = torch.inference_mode()  # the devices' threads start with autograd on
    pieces = [no_grad(lambda inputs, p=p: p(*inputs)) for p in spatial.pieces]

    def device(transport) -> SpatialStep:
        return SpatialStep(programs[transport.rank], pieces, TorchTensors(x.device), transport, lambda v: v,
                           no_grad(spatial.pool), no_grad(spatial.classifier))

    return LocalGroup(tiling.devices, copy=torch.clone).run(device, x)
