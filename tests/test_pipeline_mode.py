"""Layer-wise pipeline baseline: stages rebuild the model exactly, cuts are balanced, and a gloo run through
the communicator matches the whole model, ragged last batch included."""

import copy
import functools
import itertools

import pytest
import timm
import torch
from conftest import randomize_

from decnn.distributed.communicator import Communicator
from decnn.distributed.launcher import launch
from decnn.inference.inputs import Normalize
from decnn.inference.optimize import prepare_for_inference
from decnn.inference.pipeline_mode import (
    PipelineMode,
    UnitProfile,
    balanced_cuts,
    model_units,
    profile_units,
    stage_module,
)
from decnn.models import BasicBlock, Bottleneck, ChannelShuffle, count_params

MODELS = {  # name -> (timm name, kwargs)
    "r18_g4": ("decnn_resnet18", {"width": 0.5}),
    "r34_plain": ("decnn_resnet34", {"groups": 1, "width": 0.5, "stem": "imagenet"}),
    "r50_g4": ("decnn_resnet50", {"width": 0.5, "shuffle_after": (1,)}),
}
SAMPLE = torch.zeros(1, 3, 32, 32)


def _model(key: str) -> torch.nn.Module:
    return copy.deepcopy(_built(key))  # a copy: preparing a model folds its batch norms in place


@functools.cache
def _built(key: str) -> torch.nn.Module:
    name, kwargs = MODELS[key]
    return randomize_(timm.create_model(name, num_classes=10, **kwargs))


def _cuts(model: torch.nn.Module, num_stages: int) -> list[int]:
    return balanced_cuts(profile_units(model, SAMPLE), num_stages)


def _is_whole_unit(module: torch.nn.Module, name: str) -> bool:
    """A stem, a residual block, a block followed by its shuffle, or the head — never part of a block."""
    if name in ("stem", "head"):
        return True
    if isinstance(module, torch.nn.Sequential):
        return len(module) == 2 and isinstance(module[1], ChannelShuffle) and _is_whole_unit(module[0], "")
    return isinstance(module, (BasicBlock, Bottleneck))


@pytest.mark.parametrize("num_stages", [2, 3, 4])
@pytest.mark.parametrize("key", list(MODELS))
def test_stages_in_sequence_are_the_model(key, num_stages, rng):
    model = _model(key)
    cuts = _cuts(model, num_stages)
    stages = [stage_module(model, cuts, s) for s in range(num_stages)]
    x = torch.randn(3, 3, 32, 32, generator=rng)
    with torch.no_grad():
        y, expected = x, model(x)
        for stage in stages:
            y = stage(y)
    assert (y - expected).abs().max() <= 1e-5
    assert sum(count_params(s) for s in stages) == count_params(model)
    owned = [{p.data_ptr() for p in s.parameters()} for s in stages]
    assert sum(map(len, owned)) == len(set().union(*owned)), "a weight is held by two stages"
    for stage in stages:
        assert all(_is_whole_unit(m, name) for name, m in stage.named_children())


@pytest.mark.parametrize("num_stages", [2, 3, 4])
@pytest.mark.parametrize("key", list(MODELS))
def test_cuts_are_balanced(key, num_stages):
    model = _model(key)
    profiles = profile_units(model, SAMPLE)
    cuts = balanced_cuts(profiles, num_stages)
    costs = [p.seconds for p in profiles]
    assert len(cuts) == num_stages - 1 and cuts == sorted(set(cuts)) and 0 < cuts[0] and cuts[-1] < len(costs)
    bounds = [0, *cuts, len(costs)]
    stage_costs = [sum(costs[a:b]) for a, b in itertools.pairwise(bounds)]
    # Whatever the measured times: a contiguous split exists whose costliest stage is under the mean plus the
    # costliest unit, and the chosen one is the best of all.
    assert max(stage_costs) <= sum(costs) / num_stages + max(costs)
    every_split = itertools.combinations(range(1, len(costs)), num_stages - 1)
    slowest = [max(sum(costs[a:b]) for a, b in itertools.pairwise([0, *c, len(costs)])) for c in every_split]
    assert max(stage_costs) == min(slowest)


def test_equally_balanced_splits_prefer_the_smaller_activation():
    costs, out_bytes = [1, 2, 0, 2, 1], [400, 300, 20, 100, 40]
    profiles = [UnitProfile(str(i), c, (b // 4,), b) for i, (c, b) in enumerate(zip(costs, out_bytes))]
    assert balanced_cuts(profiles, 2) == [3]  # cuts 2 and 3 both give 3 + 3; unit 2's output is smaller
    assert balanced_cuts(profiles, 3) == [3, 4]  # 3 + 2 + 1, with 20 + 100 bytes across: the fewest of all 3s
    assert balanced_cuts(profiles, 1) == []


def test_units_cover_the_model_and_reject_bad_requests():
    model = _model("r18_g4")
    names = list(model_units(model))
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 2 + 8
    with pytest.raises(ValueError, match="num_stages"):
        _cuts(model, len(names) + 1)
    with pytest.raises(ValueError, match="stage_index"):
        stage_module(model, _cuts(model, 2), 2)


def test_a_prepared_model_is_cut_between_the_same_blocks():
    model = _model("r18_g4")
    assert list(model_units(prepare_for_inference(model))) == list(model_units(_model("r18_g4")))


BATCHES = (4, 4, 3)  # the last batch is ragged: 2 + 1 micro-batches


def _pipeline_worker(key: str) -> dict:
    """One rank of a pipeline over the launched world: logits, counted messages and the stage's parameters."""
    torch.set_num_threads(1)
    comm = Communicator(timeout_s=60)
    model = _model(key)
    normalize = Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], comm.device)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8) for n in BATCHES]
    with torch.inference_mode():
        reference = torch.cat([model(normalize(x)) for x in batches])
    mode = PipelineMode(prepare_for_inference(model), comm, normalize, 2, (2, 3, 32, 32))
    inputs = batches if comm.rank == 0 else [torch.empty_like(b) for b in batches]
    out = mode.step(inputs)
    result = {"counts": dict(comm.counts), "params": count_params(mode.module), "sent": mode.sent_bytes,
              "cut_bytes": mode.cut_bytes_per_image, "reference": reference,
              "logits": None if out is None else torch.cat(out)}
    comm.close()
    return result


# 3 ranks of a DeCNN: slow (the 2 ranks of the plain ResNet take the same path, ragged batch and counts included)
@pytest.mark.parametrize("key, ranks", [pytest.param("r18_g4", 3, marks=pytest.mark.slow), ("r34_plain", 2)])
def test_pipeline_through_the_communicator_matches_the_whole_model(key, ranks):
    results = launch(_pipeline_worker, (key,), ranks)
    first, last = results[0], results[ranks - 1]
    assert (first["logits"] - first["reference"]).abs().max() <= 1e-4  # BN folded: float rounding only
    assert torch.equal(first["logits"].argmax(1), first["reference"].argmax(1))
    assert all(results[r]["logits"] is None for r in range(1, ranks))
    assert sum(r["params"] for r in results.values()) == count_params(prepare_for_inference(_model(key)))
    micro = 2 + 2 + 2  # micro-batches of BATCHES
    assert first["counts"]["send"] == micro and first["counts"]["recv"] == len(BATCHES)  # + the logits back
    assert last["counts"] == {"broadcast_object": 1, "recv": micro, "send": len(BATCHES)}
    assert first["sent"] == sum(BATCHES) * first["cut_bytes"][0]
    assert last["sent"] == sum(BATCHES) * 10 * 4  # the logits, back to rank 0
