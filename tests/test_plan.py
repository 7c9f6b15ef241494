"""The planner: synthetic profiles whose optimum is known by brute force; profiles round-trip through JSON."""

import itertools

import pytest
import torch

from decnn.common.costmodel import transfer_seconds
from decnn.models.decoupled_resnet import ChannelShuffle
from decnn.partition import Placement, extract_branches, run_branches_locally
from decnn.plan.planner import candidates, eligible_dtypes, placements, plan, predict_branch
from decnn.plan.profile import DeviceProfile, LinkProfile, Profile

DTYPES = ("fp32", "fp16", "bf16", "int8")


def synthetic(groups=4, speeds=(1.0, 1.0), rate=1e9, batch=1, int8_top1=0.9) -> Profile:
    """A profile in which a branch of k groups takes k/G of 40 ms per segment pair, divided by the speed."""
    n, segments = len(speeds), 3
    channels, pixels = [16 * groups, 32 * groups], [64, 16]

    def device(rank, speed):
        seg = [[0.010 * k / groups / speed] * segments + [0.0001] for k in range(1, groups + 1)]
        pack = {d: [[0.0002 * k / groups / speed] * (segments - 1) for k in range(1, groups + 1)] for d in DTYPES}
        return DeviceProfile(rank, f"h{rank}", 1, seg, pack, [0.004 / speed] * 10)

    links = LinkProfile([[0.0 if s == d else 1e-4 for d in range(n)] for s in range(n)],
                        [[0.0 if s == d else rate for d in range(n)] for s in range(n)], {"all_to_all": 2e-4})
    return Profile(
        model="synthetic", groups=groups, width=1.0, stem="tiny", batch=batch, image_size=16, channels=channels,
        pixels=pixels, permutations=[ChannelShuffle(c, groups).permutation.tolist() for c in channels],
        input_bytes=768, logits_bytes=40, unit_names=[f"u{i}" for i in range(10)], unit_out_bytes=[4096] * 10,
        agreement={d: {"top1_agreement": int8_top1 if d == "int8" else 1.0, "max_abs_diff": 0.0} for d in DTYPES},
        devices=[device(r, s) for r, s in enumerate(speeds)], links=links,
    )


def every_assignment(groups, devices):
    """Every assignment of groups to devices that leaves no device empty (not only consecutive groups)."""
    for owners in itertools.product(range(devices), repeat=groups):
        if len(set(owners)) == devices:
            yield Placement(groups, tuple(tuple(g for g in range(groups) if owners[g] == d) for d in range(devices)))


@pytest.mark.parametrize("speeds,rate", [((1.0, 1.0), 1e9), ((1.0, 1 / 3), 1e9), ((1.0, 0.5), 2.5e6),
                                         ((1.0, 0.6, 0.3), 1e8)])
@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_planner_finds_the_brute_force_optimum(speeds, rate, objective):
    profile = synthetic(speeds=speeds, rate=rate)
    best = plan(profile, objective, modes=("branch",))[0]
    brute = min(
        (predict_branch(profile, p, d, k) for p in every_assignment(4, len(speeds))
         for d in eligible_dtypes(profile) for k in range(1, 5)),
        key=lambda pred: pred.step_s if objective == "latency" else pred.per_batch_s)
    assert best.cost(objective) == pytest.approx(brute.step_s if objective == "latency" else brute.per_batch_s)


def test_a_device_three_times_slower_gets_one_group_of_four():
    best = plan(synthetic(speeds=(1.0, 1 / 3)), "latency", modes=("branch",))[0]
    assert [len(d) for d in best.placement.devices] == [3, 1]
    even = plan(synthetic(speeds=(1.0, 1.0)), "latency", modes=("branch",))[0]
    assert [len(d) for d in even.placement.devices] == [2, 2]


def test_g8_gives_finer_steps():
    best = plan(synthetic(groups=8, speeds=(1.0, 0.6)), "latency", modes=("branch",))[0]
    assert [len(d) for d in best.placement.devices] == [5, 3]  # 5/8 vs 3/0.6/8: the most even finish


def test_only_dtypes_meeting_the_agreement_bound_are_candidates():
    profile = synthetic(int8_top1=0.9)
    assert "int8" not in eligible_dtypes(profile)
    assert all(p.exchange_dtype != "int8" for p in candidates(profile))
    assert "int8" in eligible_dtypes(synthetic(int8_top1=1.0))


def test_slow_link_prefers_one_device():
    ranked = plan(synthetic(rate=1e5), "latency")
    assert ranked[0].mode == "single"
    assert ranked[0].infer_args() == ["--mode", "single"]


def test_placements_are_all_compositions():
    assert [[len(d) for d in p.devices] for p in placements(4, 2)] == [[1, 3], [2, 2], [3, 1]]
    assert len(placements(8, 4)) == 35  # C(7, 3)


def test_branch_prediction_matches_the_formula():
    profile = synthetic(rate=1e6)
    pred = predict_branch(profile, Placement.even(4, 2), "fp16", 1)
    compute = 3 * 0.005 + 2 * 0.0001 + 0.0001  # three segments of half the groups, two packings, the head
    # Each shuffle: a device holds half the channels (32 of 64, 64 of 128) and sends half of those to the other
    # (fp16, 64 or 16 pixels, batch 1) at 1 MB/s.
    sends = [16 * 64 * 2, 32 * 16 * 2]
    transfer = sum(transfer_seconds([[0, b], [b, 0]], profile.links.bytes_per_s, 2e-4) for b in sends)
    broadcast, reduce = 1e-4 + 768 / 1e6, 1e-4 + 40 / 1e6
    assert pred.step_s == pytest.approx(compute + transfer + broadcast + reduce)
    assert pred.step_s == pytest.approx(0.0153 + (2e-4 + 2048e-6) + (2e-4 + 1024e-6) + 868e-6 + 140e-6)


def test_profile_round_trips_through_json(tmp_path):
    profile = synthetic(speeds=(1.0, 0.5))
    path = tmp_path / "p.json"
    profile.save(path)
    assert Profile.load(path) == profile


def test_profile_of_another_version_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(synthetic().to_json().replace('"version": 1', '"version": 0'))
    with pytest.raises(ValueError, match="measure it again"):
        Profile.load(path)
    with pytest.raises(ValueError, match=r"decnn plan profile"):
        Profile.load(tmp_path / "missing.json")


def test_local_run_hook_sees_every_step_and_keeps_the_result():
    import timm

    model = timm.create_model("decnn_resnet18", width=0.25).eval()
    branches = extract_branches(model, Placement.even(4, 2))
    x = torch.randn(1, 3, 32, 32)
    seen = []
    out = run_branches_locally(branches, x, on_step=lambda d, i, run: seen.append((d, i)) or run())
    assert sorted(seen) == [(d, i) for d in range(2) for i in range(len(branches[0].segments) + 1)]
    torch.testing.assert_close(out, run_branches_locally(branches, x))


@pytest.mark.slow
def test_profile_over_two_processes_then_plan_runs_and_reports(tmp_path, capsys):
    import json

    from decnn.jobs.infer import main as infer_main
    from decnn.plan.__main__ import main as plan_main

    path = tmp_path / "profile.json"
    small = ["--width", "0.25", "--image-size", "32"]
    assert plan_main(["profile", "--devices", "2", "--batch", "2", *small, "--out", str(path)]) == 0
    profile = Profile.load(path)
    assert profile.num_devices == 2 and len(profile.devices[1].segment_s) == profile.groups
    assert profile.links.bytes_per_s[0][1] > 0 and profile.links.latency_s[1][0] > 0
    out = tmp_path / "report.json"
    assert infer_main(["--random-init", *small, "--devices", "2", "--batch", "2", "--num-images", "8",
                       "--plan", str(path), "--out", str(out), "--log-dir", ""]) == 0
    report = json.loads(out.read_text())
    assert report["plan"]["args"] == plan(profile, "latency")[0].infer_args()
    assert report["plan"]["measured_ms"] > 0 and "predicted" in capsys.readouterr().out


def test_a_spatial_split_costs_each_step_of_its_slowest_device_and_each_exchange():
    """Lockstep: per step the slowest device, then the halo (latency + the busiest endpoint's bytes)."""
    from decnn.plan.spatial import predict_spatial

    profile = synthetic(rate=1e6)  # 1 MB/s, 0.1 ms per message
    profile.devices[0].spatial_s["modnn"] = [0.001, 0.002, 0.003, 0.0005]  # three steps, the head
    profile.devices[1].spatial_s["modnn"] = [0.002, 0.001, 0.003, 0.0002]
    profile.halo_bytes["modnn"] = [[[0, 0], [0, 0]], [[0, 100], [100, 0]], [[0, 300], [0, 0]]]
    profile.pooled_bytes = 40
    prediction = predict_spatial(profile, "modnn")
    broadcast, reduce = 1e-4 + 768 / 1e6, 1e-4 + 40 / 1e6
    halos = (1e-4 + 100 / 1e6) + (1e-4 + 300 / 1e6)  # device 0's egress is the busiest both times
    assert prediction.step_s == pytest.approx(broadcast + 0.002 + 0.002 + 0.003 + halos + 0.0005 + reduce)
    assert prediction.transfer_s == pytest.approx(halos)


def test_a_shaped_link_lets_its_saved_up_burst_through_at_once():
    """tbf's token bucket: an idle link passes ``burst`` bytes at once and refills at its rate while the devices
    compute; what is left over goes at the rate."""
    from decnn.common.costmodel import lockstep

    rate, latency = 1e6, [[0.0, 1e-4], [1e-4, 0.0]]
    compute = [[0.010, 0.010, 0.001], [0.010, 0.010, 0.001]]  # two steps, then the head
    sent = [[[0, 100_000], [100_000, 0]]] * 2
    plain = lockstep(compute, sent, latency, [[0, rate], [rate, 0]])
    shaped = lockstep(compute, sent, latency, [[0, rate], [rate, 0]], burst=[64_000, 64_000])
    assert plain.step_s == pytest.approx(0.021 + 2 * (1e-4 + 0.1))
    # The full bucket covers 64 kB of the first exchange; 10 ms of compute refill 10 kB for the second.
    assert shaped.transfer_s == pytest.approx((1e-4 + 0.036) + (1e-4 + 0.090))
