"""Layer-wise pipeline baseline: stages rebuild the model exactly, cuts are balanced, and a gloo run matches."""

import datetime
import itertools
import os
import socket
import time

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import randomize_

from decnn.inference.pipeline_mode import (
    UnitProfile,
    balanced_cuts,
    build_stage_module,
    model_units,
    profile_units,
    run_pipeline,
    split_points,
)
from decnn.models import BasicBlock, Bottleneck, ChannelShuffle, count_params

MODELS = {  # name -> (timm name, kwargs)
    "r18_g4": ("decnn_resnet18", {"width": 0.5}),
    "r34_plain": ("decnn_resnet34", {"groups": 1, "width": 0.5, "stem": "imagenet"}),
    "r50_g4": ("decnn_resnet50", {"width": 0.5, "shuffle_after": (1,)}),
}
SAMPLE = torch.zeros(1, 3, 32, 32)


def _model(key: str) -> torch.nn.Module:
    name, kwargs = MODELS[key]
    return randomize_(timm.create_model(name, num_classes=10, **kwargs))


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
    stages = [build_stage_module(model, num_stages, s, SAMPLE) for s in range(num_stages)]
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
def test_split_points_are_balanced(key, num_stages):
    model = _model(key)
    cuts = split_points(model, num_stages, SAMPLE)
    costs = [p.cost for p in profile_units(model, SAMPLE)]
    assert len(cuts) == num_stages - 1 and cuts == sorted(set(cuts)) and 0 < cuts[0] and cuts[-1] < len(costs)
    bounds = [0, *cuts, len(costs)]
    stage_costs = [sum(costs[a:b]) for a, b in itertools.pairwise(bounds)]
    ideal = sum(costs) / num_stages
    assert max(stage_costs) <= 2 * ideal
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
        split_points(model, len(names) + 1, SAMPLE)
    with pytest.raises(ValueError, match="balance"):
        split_points(model, 2, SAMPLE, balance="params")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images() -> list[torch.Tensor]:
    return [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]


TIMEOUT = datetime.timedelta(seconds=30)
# (model, global ranks of the pipeline, in stage order): 2 stages on ranks 0-1 (the runner's usual case),
# 2 stages on a group whose rank 0 is global rank 1, and 3 stages on the whole world.
RUNS = [("r18_g4", (0, 1)), ("r34_plain", (0, 1)), ("r18_g4", (1, 2)), ("r18_g4", (0, 1, 2))]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=3, timeout=TIMEOUT)
    try:
        groups = {ranks: dist.new_group(list(ranks), timeout=TIMEOUT) for _, ranks in RUNS if len(ranks) < 3}
        results = {}
        for key, ranks in RUNS:
            if rank in ranks:
                # Only the group's rank 0 reads the images: the others pass none.
                images = _images() if rank == ranks[0] else []
                results[key, ranks] = run_pipeline(_model(key), images, microbatches=2, group=groups.get(ranks))
        try:
            run_pipeline(_model("r18_g4"), [torch.zeros(5, 3, 32, 32)], microbatches=2)
        except ValueError as err:
            results["error"] = str(err)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gloo_pipeline_matches_single_process(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=3, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("pipeline workers did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(3)]

    for key, ranks in RUNS:
        model = _model(key)
        with torch.no_grad():
            expected = torch.cat([model(x) for x in _images()])
        (logits, stats), *others = [results[r][key, ranks] for r in ranks]
        assert logits.shape == expected.shape and (logits - expected).abs().max() <= 1e-5
        assert all(out is None for out, _ in others)
        per_stage = [stats] + [s for _, s in others]
        assert [s["rank"] for s in per_stage] == list(range(len(ranks)))
        assert all(len(s["latency_s"]) == 2 and min(s["compute_s"]) > 0 for s in per_stage)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        assert sum(s["param_bytes"] for s in per_stage) == param_bytes
        cut_bytes = stats["cut_bytes_per_image"]
        assert len(cut_bytes) == len(ranks) - 1 and all(b > 0 for b in cut_bytes)
        assert stats["sent_bytes"] == 8 * cut_bytes[0]
        assert per_stage[-1]["sent_bytes"] == 8 * 10 * 4  # the logits, back to rank 0
    assert all("not divisible by microbatches=2" in r["error"] for r in results)
