"""Heterogeneous devices, emulated: one host's CPU slowed by a cgroup bandwidth quota, one host's link slowed
by tbf in both directions, on the namespaces of :class:`decnn.emulation.links.EmulatedLink`.

A CPU quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` where only v1 is mounted) lets a host's
processes run ``fraction`` of one core's time in every 10 ms period: a board that many times slower than
the others, with the same kernels. The period is short so that the throttling is smooth at the scale of
one segment (milliseconds), not a stall of 100 ms now and then.

    sudo .venv/bin/decnn plan hetero --slow-host 1 --cpu 0.4 --batch 1
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.emulation.links import EmulatedLink
from decnn.emulation.quota import CpuQuota
from decnn.emulation.rates import parse_rate
from decnn.partition import Placement
from decnn.plan.planner import Plan, plan, predict_branch, predict_single
from decnn.plan.profile import Profile


def shape_host(link: EmulatedLink, host: int, rate: str) -> None:
    """Limit host ``host``'s link to ``rate`` both ways: its own egress and the bridge port towards it."""
    bits = int(parse_rate(rate))
    burst = str(max(64 * 1024, bits // 8 // 1000))
    h = link.hosts[host]
    for netns, dev in ((h.netns, h.ifname), (link.bridge_netns, f"h{host}")):  # emulated_link.py names ports h<i>
        subprocess.run(["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits}bit",
                        "burst", burst, "latency", "100ms"], check=True, capture_output=True)


def torchrun_argv(link: EmulatedLink, host: int, args: list[str], port: int) -> list[str]:
    """torchrun for one process on ``host`` with a static rendezvous, so host i is always rank i."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(link.hosts)), "--nproc-per-node", "1",
            "--node-rank", str(host), "--rdzv-backend", "static", "--master-addr", link.hosts[0].address,
            "--master-port", str(port), "--local-addr", link.hosts[host].address, "-m", *map(str, args)]


def run_on_hosts(link: EmulatedLink, args: list[str], port: int, slow: tuple[int, CpuQuota] | None,
                 timeout: float = 300) -> None:
    """``python -m <args>`` on every host (rank = host index), host ``slow[0]`` under the CPU quota."""
    procs = []
    for i in range(len(link.hosts)):
        procs.append(link.popen(i, torchrun_argv(link, i, args, port), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True))
        if slow and slow[0] == i:
            slow[1].add(procs[-1].pid)  # `ip netns exec` execs the command: same pid, before it forks
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        if p.returncode:
            tail = "\n".join(out.strip().splitlines()[-6:])
            raise RuntimeError(f"host {i} exited with code {p.returncode}:\n{tail}")


def run_single(link: EmulatedLink, args: list[str]) -> None:
    """One process on host 0 (the fast device), no process group."""
    out = link.run(0, [sys.executable, "-m", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"single run failed:\n{out.stdout[-800:]}{out.stderr[-800:]}")


def side_by_side(devices: int, batch: int, slow_host: int, cpu: float, link_rate: str | None,
                 slow_link: str | None, rounds: int, images: int, objective: str) -> dict:
    """Profile the emulated devices, plan, then run the even placement, the plan and one device (host 0)
    in interleaved rounds; returns predictions and per-round measurements."""
    port = 29600
    with EmulatedLink(link_rate, devices, name_prefix="decnnplan") as link, CpuQuota(cpu) as quota, \
            tempfile.TemporaryDirectory(prefix="decnn-plan-") as tmp:
        if slow_link:
            shape_host(link, slow_host, slow_link)
        slow = (slow_host, quota) if cpu < 1 else None
        path = Path(tmp) / "profile.json"
        run_on_hosts(link, ["decnn.plan", "profile", "--batch", batch, "--out", path], port, slow)
        profile = Profile.load(path)
        ranked = plan(profile, objective)
        even = Placement.even(profile.groups, devices)
        configs = {
            "one device (host 0)": Plan("single", 1, predict_single(profile)),
            "even placement": Plan("branch", devices, predict_branch(profile, even, "fp32", 1), even),
            "planner's choice": ranked[0],
        }
        measured = {name: [] for name in configs}
        for _ in range(rounds):
            for name, p in configs.items():
                port += 1
                out = Path(tmp) / "report.json"
                args = ["decnn.jobs.infer", "--random-init", "--batch", batch, "--threads", 1, "--num-images",
                        images * batch, "--warmup", 2, "--log-dir", "", "--out", out, *p.infer_args()]
                if p.mode == "single":
                    run_single(link, args)
                else:
                    run_on_hosts(link, args, port, slow)
                report = json.loads(out.read_text())
                measured[name].append(report["latency_ms"]["p50"] if objective == "latency"
                                      else 1e3 * batch / report["throughput_ips"])
    return {
        "setup": {"devices": devices, "batch": batch, "slow_host": slow_host, "cpu_fraction": cpu,
                  "link": link_rate or "unshaped", "slow_link": slow_link, "objective": objective,
                  "rounds": rounds, "images": images},
        "ranking": [{"plan": p.describe(), "predicted_ms": p.cost(objective) * 1e3} for p in ranked[:5]],
        "results": [{"config": name, "plan": p.describe(), "predicted_ms": p.cost(objective) * 1e3,
                     "measured_ms_per_round": measured[name], "measured_ms": statistics.median(measured[name])}
                    for name, p in configs.items()],
    }


def format_side_by_side(result: dict) -> str:
    lines = ["| configuration | plan | predicted ms | measured ms (median) | error | per round |",
             "|---|---|---:|---:|---:|---|"]
    for r in result["results"]:
        err = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        rounds = ", ".join(f"{m:.1f}" for m in r["measured_ms_per_round"])
        lines.append(f"| {r['config']} | {r['plan']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} "
                     f"| {err:+.1%} | {rounds} |")
    return "\n".join(lines)
