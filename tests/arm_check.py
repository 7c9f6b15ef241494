"""``make arm-check``: decnn's device environment on an arm64 board's userland, its logits against x86's.

A Debian arm64 root (debootstrap, kept in ~/.cache/decnn/arm64-root) runs under qemu-user (binfmt_misc, mounted
for the check where it is not, and unmounted after). decnn[edge] is installed in it as `decnn deploy` installs a
board that reaches no package index: the same script, from wheels fetched here for its platform (manylinux
aarch64, its Python and glibc). A DeCNN ResNet-18 G4 x0.5 export (random weights, 32x32, 8 images) for 1 and for 2
devices runs with `decnn edge --verify --check-exchange` there and here; the check passes where both runs
verify, their logits agree within 1e-4 and every top-1 class agrees. qemu-user does not emulate MPICH's
cross-memory attach (process_vm_readv): the arm64 runs set MPIR_CVAR_CH4_CMA_ENABLE=0 (without it the exchange
delivers wrong bytes; --check-exchange and --verify catch that). Each command in the root runs in a mount
namespace of its own, with /proc, /dev and /dev/shm bound in (no /sys: with it MPI's TCP segfaults under qemu).

    sudo .venv/bin/python tests/arm_check.py [--out results/arm-check.json]

Needs root, debootstrap, qemu-user-static and binfmt-support (apt-get install -y debootstrap qemu-user-static
binfmt-support). Prints the result and its duration; exit 1 if the check fails.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "decnn" / "arm64-root"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BOARD = "/root/.decnn"  # where decnn deploy puts a board's environment
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOLERANCE = 1e-4
IMAGES = 8


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        sys.exit(f"error: `{' '.join(argv[:4])} ...` failed ({proc.returncode}): {' | '.join(tail)}")
    return proc


def in_root(command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``command`` (shell) in the arm64 root, in a mount namespace of its own with /proc, /dev, /dev/shm bound in."""
    binds = " && ".join(f"mount --bind {d} {ROOT}{d}" for d in ("/proc", "/dev", "/dev/shm"))
    inner = f"{binds} && exec chroot {ROOT} /bin/sh -c {shlex.quote(command)}"
    return run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
               env={"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})})


def make_root() -> None:
    if (ROOT / ".decnn-complete").exists():
        return
    tmp = ROOT.with_name("arm64-root.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"debootstrap: a Debian arm64 root in {ROOT} ...", flush=True)
    run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,python3-pip", "bookworm",
         str(tmp), "http://deb.debian.org/debian"])
    tmp.rename(ROOT)
    (ROOT / ".decnn-complete").touch()


def install() -> None:
    """decnn[edge] in the root's /root/.decnn/env, as decnn deploy installs an offline board."""
    from decnn.cluster.environment import ENV, STAMP, WHEELS, Platform, Wheels, install_script, requirements
    from decnn.cluster.hosts import Ssh
    from decnn.cluster.session import Session

    said = in_root("python3 -c 'import platform, sys; print(*sys.version_info[:2], "
                   "*platform.libc_ver()[1].split(\".\"))'").stdout.split()
    platform = Platform("aarch64", (int(said[0]), int(said[1])), (int(said[2]), int(said[3])))
    wheels = Wheels()
    stamp = Session([], Ssh(), wheels).stamp
    stamp_file = ROOT / BOARD.lstrip("/") / ENV / STAMP
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return
    folder = ROOT / BOARD.lstrip("/") / WHEELS
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in [wheels.decnn(), *wheels.dependencies(platform)]:
        shutil.copy2(wheel, folder)
    print(f"installing decnn[edge] in the arm64 root from {len(list(folder.glob('*.whl')))} wheels ({platform.key}) "
          "...", flush=True)
    script = install_script(BOARD, wheels.decnn(), requirements(wheels.decnn())[1:], offline=True, full=True,
                            new_stamp=stamp)
    warned = in_root(script).stderr
    if "WARNING" in warned:
        sys.exit(f"error: pip warned while installing decnn[edge]: {warned.strip()}")


def export(tmp: Path) -> dict[int, Path]:
    """A random-init DeCNN ResNet-18 G4 x0.5 exported for 1 and 2 devices, and the images, in ``tmp``."""
    import timm
    from conftest import randomize_  # logits of order 1: the init's would be tiny, and so their differences

    from decnn.common.checkpoint import save_checkpoint
    from decnn.deploy.export import main as export_main

    kwargs = {"width": 0.5, "num_classes": 10}
    model = randomize_(timm.create_model("decnn_resnet18", **kwargs))
    save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "model_name": "decnn_resnet18",
                                      "model_kwargs": kwargs, "config": {"data": {"image_size": 32}}})
    folders = {}
    for devices in (1, 2):
        folders[devices] = tmp / f"devices{devices}"
        if export_main([str(tmp / "best.pt"), "--devices", str(devices), "--out", str(folders[devices]), "--onnx"]):
            sys.exit("error: decnn export failed")
    images = np.random.default_rng(0).integers(0, 256, (IMAGES, 3, 32, 32), dtype=np.uint8)
    np.savez(tmp / "inputs.npz", images=images)
    return folders


def edge_args(folder: str, inputs: str, out: str) -> list[str]:
    return [folder, "--verify", "--check-exchange", "--inputs", inputs, "--images", str(IMAGES), "--threads", "1",
            "--no-pin-cores", "--logits", f"{out}.npy", "--out", f"{out}.json"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/arm-check.json")
    args = p.parse_args()
    missing = [t for t in ("debootstrap", "qemu-aarch64-static", "update-binfmts", "unshare") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        sys.exit("error: the arm64 check needs root and apt-get install -y debootstrap qemu-user-static "
                 f"binfmt-support{f' (missing: {missing})' if missing else ''}")
    start = time.monotonic()
    mounted = not (BINFMT / "status").exists()
    if mounted:
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    try:
        run(["update-binfmts", "--enable", "qemu-aarch64"])
        make_root()
        install()
        results = check()
    finally:
        if mounted:
            subprocess.run(["umount", str(BINFMT)], check=False)
    results["duration_s"] = time.monotonic() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for n, r in results["devices"].items():
        print(f"{n} device(s): arm64 vs x86 max |dlogit| {r['max_abs_diff_vs_x86']:.2e}, top-1 agreement "
              f"{r['top1_agreement_vs_x86']:.0%}; verified against model.onnx: arm64 {r['arm64_verified']} "
              f"({r['arm64_max_rel_diff']:.1e}), x86 {r['x86_verified']}; arm64 p50 {r['arm64_p50_ms']:.1f} ms "
              f"(emulated), x86 {r['x86_p50_ms']:.2f} ms")
    verdict = "passed" if results["passed"] else "FAILED"
    print(f"arm64 check {verdict} in {results['duration_s']:.0f} s; wrote {args.out}")
    return 0 if results["passed"] else 1


def check() -> dict:
    with tempfile.TemporaryDirectory(prefix="decnn-arm-check-") as tmp:
        tmp = Path(tmp)
        folders = export(tmp)
        inside = ROOT / "root" / "check"
        shutil.rmtree(inside, ignore_errors=True)
        shutil.copytree(tmp, inside, ignore=shutil.ignore_patterns("*.pt"))
        results, passed = {}, True
        for devices, folder in folders.items():
            print(f"decnn edge on {devices} device(s): x86 here, arm64 under qemu-user ...", flush=True)
            run([sys.executable, "-m", "decnn.edge.launch",
                 *edge_args(str(folder), str(tmp / "inputs.npz"), str(tmp / f"x86-{devices}"))])
            in_root(" ".join(map(shlex.quote, [f"{BOARD}/env/bin/decnn", "edge", *edge_args(
                f"/root/check/{folder.name}", "/root/check/inputs.npz", f"/root/check/arm-{devices}")])),
                env={"MPIR_CVAR_CH4_CMA_ENABLE": "0"})
            x86, arm = np.load(tmp / f"x86-{devices}.npy"), np.load(inside / f"arm-{devices}.npy")
            x86_record = json.loads((tmp / f"x86-{devices}.json").read_text())
            arm_record = json.loads((inside / f"arm-{devices}.json").read_text())
            row = {"max_abs_diff_vs_x86": float(np.abs(arm - x86).max()),
                   "top1_agreement_vs_x86": float((arm.argmax(1) == x86.argmax(1)).mean()),
                   "arm64_verified": arm_record["verified"], "arm64_max_rel_diff": arm_record["max_rel_diff"],
                   "x86_verified": x86_record["verified"], "arm64_p50_ms": arm_record["latency_ms"]["p50"],
                   "x86_p50_ms": x86_record["latency_ms"]["p50"]}
            results[str(devices)] = row
            passed &= (row["max_abs_diff_vs_x86"] <= TOLERANCE and row["top1_agreement_vs_x86"] == 1.0
                       and row["arm64_verified"] and row["x86_verified"])
        shutil.rmtree(inside, ignore_errors=True)
    return {"devices": results, "passed": passed, "images": IMAGES, "tolerance": TOLERANCE,
            "qemu_setting": {"MPIR_CVAR_CH4_CMA_ENABLE": "0"}}


if __name__ == "__main__":
    sys.exit(main())
