"""Check emulated edge links: TCP throughput host 0 -> host 1 per rate, optionally a gloo all_to_all.

    sudo .venv/bin/decnn bench links [--rates 20mbit 100mbit 1gbit unshaped]
    sudo .venv/bin/decnn bench links --rates 20mbit --seconds 1.0 --gloo-kb 200 --out FILE

Each rate gets a fresh two-host EmulatedLink; the transfer is sized to take about ``--seconds`` at
that rate (unshaped: 200 MB). With ``--gloo-kb`` each link also runs two torchrun nodes that time an
``all_to_all_single`` of that many KB per rank (median of 20 after 3 warm-ups). Needs root.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.emulation.links import EmulatedLink
from decnn.emulation.netns import links_available
from decnn.emulation.rates import parse_rate

UNSHAPED_BYTES = 200_000_000
GLOO_WORKER = """
import statistics, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
n = int(sys.argv[1]) * 1024 // 4
x, y = torch.ones(n), torch.empty(n)
times = []
for i in range(23):
    dist.barrier()
    t = time.perf_counter()
    dist.all_to_all_single(y, x)
    times.append(time.perf_counter() - t)
if dist.get_rank() == 0:
    print("ALL_TO_ALL_MS", statistics.median(times[3:]) * 1e3, flush=True)
dist.destroy_process_group()
"""


def gloo_all_to_all_ms(link: EmulatedLink, kb: int, workdir: Path) -> float:
    script = workdir / "a2a.py"
    script.write_text(GLOO_WORKER)
    logs = [workdir / f"host{i}.log" for i in range(2)]
    procs = [link.popen(i, link.torchrun_argv(i, [script, kb]), stdout=log.open("w"),
                        stderr=subprocess.STDOUT)
             for i, log in enumerate(logs)]
    for proc, log in zip(procs, logs):
        if proc.wait(timeout=300) != 0:
            sys.exit(f"torchrun failed:\n{log.read_text()[-3000:]}")
    line = next(ln for ln in logs[0].read_text().splitlines() + logs[1].read_text().splitlines()
                if ln.startswith("ALL_TO_ALL_MS"))
    return float(line.split()[1])


def main(argv: list[str] | None = None) -> None:
    ap = job_parser("bench links", __doc__)
    ap.add_argument("--rates", nargs="+", default=["20mbit", "100mbit", "1gbit", "unshaped"])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--gloo-kb", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    ok, reason = links_available()
    if not ok:
        sys.exit(reason)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            shaped = rate.lower() != "unshaped"
            nbytes = int(parse_rate(rate) / 8 * args.seconds) if shaped else UNSHAPED_BYTES
            with EmulatedLink(rate) as link:
                row = {"rate": rate, "nominal_mbit": parse_rate(rate) / 1e6 if shaped else None,
                       "bytes": nbytes, "measured_mbit": link.measure_bps(0, 1, nbytes) / 1e6}
                if args.gloo_kb:
                    row["gloo_all_to_all_kb"] = args.gloo_kb
                    row["gloo_all_to_all_ms"] = gloo_all_to_all_ms(link, args.gloo_kb, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(run_main(main))
