"""``decnn bench elastic``: an elastic split over emulated hosts losing a device and getting it back.

    sudo decnn bench elastic --out results/elastic.json
    sudo decnn bench elastic --faults kill --model decnn_resnet18 --width 0.5 --image-size 32

One network namespace per host (needs root): the caller (``decnn infer --elastic``, streaming batch-1 calls)
in one, three devices (``decnn device``) in the others, TCP between them. Device 2 is killed (SIGKILL; a new
device process takes its place), stopped (SIGSTOP, then SIGCONT) and cut off (its interface down, then up),
one fault after the other while the calls go on. For each fault: the seconds from the fault to the first
answer on the devices left, and from the device's return to the first answer on the grown group; the
caller's timeline (groups, placements, latency, causes) and its answers against the whole model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from decnn.common.job_parser import job_parser

FAULTS = ("kill", "stop", "link")
PORT = 29500
LOST = 2  # the device that each fault takes away (host 2 of 1..3)


def run_scenario(faults=FAULTS, timeout_s: float = 4.0, hold_s: float | None = None, settle_s: float = 20.0,
                 model_args: tuple[str, ...] = (), log_dir: str = "") -> dict:
    """The whole scenario; returns the caller's report with ``faults``: one row per fault with its times."""
    from decnn.emulation.links import EmulatedLink

    hold_s = hold_s or timeout_s + 12.0  # long enough for the devices left to answer before it returns
    duration = (settle_s + hold_s) * len(faults) + settle_s
    with EmulatedLink(None, num_hosts=4) as link, tempfile.TemporaryDirectory() as tmp:
        endpoint = f"{link.hosts[0].address}:{PORT}"
        out = Path(tmp) / "elastic.json"
        # One thread per device: the emulated hosts share this machine's cores (a board's device uses all of its).
        caller = link.popen(0, [sys.executable, "-m", "decnn.jobs.infer", "--random-init", "--elastic", "--devices",
                                "0", "--max-devices", "3", "--rdzv-endpoint", endpoint, "--duration", duration,
                                "--timeout", timeout_s, "--threads", 1, "--verify", "--out", out, "--log-dir", log_dir,
                                *model_args],
                            stderr=subprocess.PIPE, text=True)
        lines = _Lines(caller)
        device = [sys.executable, "-m", "decnn.serve.device", endpoint, "--nnodes", "1:3"]
        devices = {i: link.popen(i, [*device, "--name", f"device{i}"]) for i in (1, 2, 3)}
        lines.wait_for("elastic split at", 300)
        rows = []
        for kind in faults:
            time.sleep(settle_s)
            fault_wall = time.time()
            _inject(link, devices, kind)
            time.sleep(hold_s)
            return_wall = time.time()
            if kind == "kill":
                devices[LOST] = link.popen(LOST, [*device, "--name", f"device{LOST}"])
            else:
                _restore(link, devices, kind)
            rows.append({"kind": kind, "device": f"device{LOST}", "fault_wall": fault_wall,
                         "return_wall": return_wall})
        if caller.wait(duration + 300) != 0:
            raise RuntimeError(f"the caller failed (exit {caller.returncode}): {' | '.join(lines.tail(5))}")
        report = json.loads(out.read_text())
    report["faults"] = [_times(row, report["timeline"]) for row in rows]
    return report


def _inject(link, devices, kind: str) -> None:
    if kind == "link":
        link.run(LOST, ["ip", "link", "set", link.hosts[LOST].ifname, "down"], check=True)
    else:
        _signal_group(devices[LOST], signal.SIGKILL if kind == "kill" else signal.SIGSTOP)


def _restore(link, devices, kind: str) -> None:
    if kind == "link":
        link.run(LOST, ["ip", "link", "set", link.hosts[LOST].ifname, "up"], check=True)
    else:
        _signal_group(devices[LOST], signal.SIGCONT)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    os.killpg(proc.pid, sig)  # the device's agent, its process server and its worker


def _times(row: dict, timeline: dict) -> dict:
    """A fault's row in seconds of the timeline, with the first answers after the fault and the return."""
    fault_s, return_s = row.pop("fault_wall") - timeline["start_wall"], row.pop("return_wall") - timeline["start_wall"]
    def has_lost(period: dict) -> bool:  # a device's label is its name, then its address
        return any(d.split()[0] == row["device"] for d in period["devices"])

    after = [p for p in timeline["periods"] if p["first_answer_s"] is not None]
    shrunk = next((p for p in after if p["first_answer_s"] > fault_s and not has_lost(p)), None)
    grown = next((p for p in after if p["first_answer_s"] > return_s and has_lost(p)), None)
    return {**row, "fault_s": fault_s, "return_s": return_s,
            "to_survivors_s": shrunk and shrunk["first_answer_s"] - fault_s,
            "survivors": shrunk and shrunk["devices"], "shrunk_epoch": shrunk and shrunk["epoch"],
            "to_grown_s": grown and grown["first_answer_s"] - return_s,
            "grown": grown and grown["devices"], "grown_epoch": grown and grown["epoch"]}


class _Lines:
    """A process's stderr lines, read on a thread of their own (echoed to ours)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))
            print(line, end="", file=sys.stderr, flush=True)

    def wait_for(self, text: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the caller did not print {text!r}: {' | '.join(self.tail(5))}")
            time.sleep(0.1)

    def tail(self, n: int) -> list[str]:
        return self.lines[-n:]


def fault_table(rows: list[dict]) -> str:
    lines = ["| fault of device2 | at (s) | first answer on the devices left | back at (s) | first answer grown |",
             "|---|---:|---:|---:|---:|"]
    words = {"kill": "killed (SIGKILL), a new process", "stop": "stopped (SIGSTOP), then SIGCONT",
             "link": "link down, then up"}
    for r in rows:
        left = f"{r['to_survivors_s']:.1f} s ({', '.join(r['survivors'])})" if r["survivors"] else "none"
        grown = f"{r['to_grown_s']:.1f} s" if r["grown"] else "none"
        lines.append(f"| {words[r['kind']]} | {r['fault_s']:.1f} | {left} | {r['return_s']:.1f} | {grown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from decnn.emulation.netns import links_available

    p = job_parser("bench elastic", __doc__)
    p.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="in this order")
    p.add_argument("--timeout", type=float, default=4.0, help="the devices' --timeout (default %(default)s)")
    p.add_argument("--model", default="decnn_resnet34")
    p.add_argument("--width", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--out", help="write the report (timeline, faults) as JSON here")
    p.add_argument("--log-dir", default="runs/bench", help="the caller's TensorBoard run goes here ('' for none)")
    args = p.parse_args(argv)
    ok, why = links_available()
    if not ok:
        p.error(why)
    model_args = ["--model", args.model, *(["--width", str(args.width)] if args.width else []),
                  *(["--image-size", str(args.image_size)] if args.image_size else [])]
    report = run_scenario(tuple(args.faults), args.timeout, model_args=tuple(model_args), log_dir=args.log_dir)
    print(fault_table(report["faults"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
