"""``decnn bench``'s run: every configuration in interleaved rounds, the cost model's predictions, the summary."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm import tqdm

from decnn.bench.configurations import BenchConfig, configurations
from decnn.bench.edge import export_models, run_edge
from decnn.bench.infer_runs import RunFailed, run_local, run_over_link
from decnn.bench.predict import measure_profiles, predictions
from decnn.bench.summary import (
    baseline_names,
    bench_table,
    crossovers,
    format_crossovers,
    format_errors,
    summarize,
    write,
)
from decnn.common.record import RunRecord
from decnn.emulation.links import EmulatedLink
from decnn.emulation.netns import links_available


def edge_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "mpi4py"))


def run(args, argv=None) -> int:
    """The benchmark that ``args`` (``decnn bench``'s, parsed) ask for; its exit code."""
    links = [None if link == "loopback" else link for link in args.link]
    if any(links):
        ok, reason = links_available()
        if not ok:
            print(f"emulated links unavailable ({reason}); running on loopback only", file=sys.stderr)
            links = [None]
    runtimes = tuple(args.runtime)
    if "edge" in runtimes and not edge_available():
        print("decnn edge needs onnxruntime and mpi4py (pip install -e '.[dev]'): torch rows only", file=sys.stderr)
        runtimes = tuple(r for r in runtimes if r != "edge")
    configs = configurations(args.batch, args.devices, links, args.exchange_dtype, args.overlap, args.link_batch,
                             runtimes, tuple(args.family))
    reports: dict[str, list[RunRecord]] = {c.label(): [] for c in configs}
    with ExitStack() as stack:
        emulated = {(link, n): stack.enter_context(EmulatedLink(link, num_hosts=n))
                    for link in links if link for n in {c.devices for c in configs if c.link == link}}
        port = 29500
        folders = export_models(configs, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        print("cost model: profiling every (link, devices, batch) over its process group ...", flush=True)
        predicted = predictions(configs, measure_profiles(configs, emulated, port + 1000))
        retried: list[str] = []  # kept in the JSON's meta
        bar = tqdm(total=args.rounds * len(configs), desc="bench", unit="run", file=sys.stdout)
        for _ in range(args.rounds):
            for c in configs:
                bar.set_postfix_str(c.label())
                images = args.images * c.batch
                for attempt in (1, 2):  # one retry: a transient failure must not throw away the rounds so far
                    try:
                        if c.runtime == "edge":
                            report = run_edge(c, folders, emulated.get((c.link, c.devices)), images, args.warmup,
                                              args.timeout)
                        elif c.link:
                            port += 1
                            report = run_over_link(c, emulated[(c.link, c.devices)], port, images, args.warmup,
                                                   args.timeout)
                        else:
                            report = run_local(c, images, args.warmup, args.timeout)
                        break
                    except RunFailed as e:
                        if attempt == 2:
                            print(f"\nerror: {e}", file=sys.stderr)
                            return 1
                        print(f"\nwarning: {e}\nrunning {c.label()} once more", file=sys.stderr)
                        retried.append(c.label())
                reports[c.label()].append(report)
                bar.update()
        bar.close()

    def baselines(config: BenchConfig) -> list[dict[str, RunRecord]]:
        """Round r's reports of ``config``'s 1-device baselines, by name."""
        labels = {n: BenchConfig(n, "single", 1, config.batch).label() for n in baseline_names(config).values()}
        return [{n: reports[label][r] for n, label in labels.items()} for r in range(args.rounds)]

    records = [summarize(c, reports[c.label()], baselines(c), predicted.get(c.label())) for c in configs]
    meta = {"started": time.strftime("%Y%m%d-%H%M%S"), "argv": sys.argv[1:] if argv is None else argv,
            "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__, "threads_per_process": 1,
            "retried": retried}
    write(records, meta, Path(args.out), args.log_dir)
    print(bench_table(records))
    if crossovers(records):
        print("\n" + format_crossovers(crossovers(records)))
    print(format_errors(records))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.md')}"
          + (f"; TensorBoard: tensorboard --logdir {args.log_dir}" if args.log_dir else ""))
    return 0

