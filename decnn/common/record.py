"""The run record: what one run measured, in one typed form that every writer and reader shares.

``infer_distributed.py`` writes one per run (JSON with ``--out``, a TensorBoard HPARAMS row, the console
table); the benchmark reads them back and writes one per configuration (medians over rounds, plus the
ratios and the cost model's prediction); ``decnn compare`` and the paper tables read them from JSON or
TensorBoard. A key this record does not know is an error, never a silent ``None``.

Every column the HPARAMS tab can show is listed here once (``EXPERIMENT_HPARAMS``, ``EXPERIMENT_METRICS``);
``decnn.common.logger`` writes them as the log root's one experiment, so any writer of a record gets them.

Fields left ``None`` were not measured by that run (accuracy without labels, ratios outside the benchmark)
and are left out of the JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MB = 2**20


class RecordError(ValueError):
    """A run record (JSON or TensorBoard) with unknown or missing keys."""


@dataclass(frozen=True)
class Latency:
    """Per-batch latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """One inference run (or a benchmark configuration's medians over rounds, or a training run's result)."""

    # What ran.
    model: str
    groups: int
    width: float
    mode: str  # single, data, branch, pipeline; "train" for a training run read back from TensorBoard
    devices: int
    name: str | None = None  # the benchmark's configuration name
    stem: str | None = None
    placement: list[list[int]] | None = None
    batch: int | None = None
    overlap: int | None = None
    exchange_dtype: str | None = None
    backend: str | None = None  # what computed the branches: torch or onnxruntime
    transport: str | None = None  # what carried the exchanges: gloo, nccl, mpi-shm or mpi-tcp (None: 1 device)
    link: str | None = None  # the benchmark's emulated link, or "loopback"
    cpu_fraction: float | None = None  # emulated boards: each device's CPU quota, in cores (decnn.emulation)
    oversubscribed: bool | None = None
    image_size: int | None = None
    images: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    checkpoint: str | None = None
    run_dir: str | None = None
    # The checkpoint's training: its run folder and best val accuracy (%), as train.py saved them.
    trained_run: str | None = None
    trained_top1: float | None = None
    trained_top5: float | None = None
    # Speed, traffic and memory.
    latency_ms: Latency | None = None
    latency_p50_ms_per_round: list[float] | None = None
    throughput_ips: float | None = None
    bytes_per_image: float | None = None
    bytes_per_image_per_point: list[float] | None = None
    # The points at which devices exchange activations, per batch: DeCNN's shuffles, a spatial split's halos.
    exchanges_per_batch: int | None = None
    bytes_saved_vs_fp32: float | None = None
    input_bytes_per_image: float | None = None
    result_bytes_per_image: float | None = None
    params_per_device_mb: float | None = None  # the largest rank's parameters
    peak_rss_mb: float | None = None  # the largest rank's peak RSS
    params_per_rank: list[int] | None = None
    peak_rss_per_rank: list[int] | None = None
    rss_above_idle_vs_whole: float | None = None  # the largest rank's RSS above an idle device, over the whole model's
    compute_s_per_rank: list[float] | None = None
    comm_wait_s_per_rank: list[float] | None = None
    pack_s_per_rank: list[float] | None = None
    # Where each rank's time went, ms per batch: the fields of decnn.inference.mode.RankBreakdown.
    breakdown_per_rank: list[dict] | None = None
    threads_per_rank: list[int] | None = None
    cores_per_rank: list[list[int]] | None = None
    hosts: list[str] | None = None
    collectives_per_batch: list[dict[str, float]] | None = None
    pipeline_stages: Any = None
    # Quality: against the labels, and against the whole model on one device (--verify).
    top1: float | None = None
    top5: float | None = None
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    verified: bool | None = None  # within the bound of decnn.common.verification (the fp32 exchange: top-1 too)
    verify_bound: float | None = None  # the largest max_rel_diff it allows
    worst_image: int | None = None  # the run's image farthest off (of those beyond the bound, if any)
    # The benchmark: ratios against the 1-device baselines (within a round, then the median): the same model and
    # runtime on 1 device (a speed-up), the plain ResNet-34 and the DeCNN of the row's family.
    speedup_vs_one_device: float | None = None
    latency_ratio_vs_resnet34: float | None = None
    throughput_ratio_vs_resnet34: float | None = None
    latency_ratio_vs_decnn_single: float | None = None
    throughput_ratio_vs_decnn_single: float | None = None
    # The cost model's prediction and the measurement it predicts.
    predicted_latency_ms: float | None = None
    predicted_compute_ms: float | None = None
    predicted_transfer_ms: float | None = None
    measured_for_prediction_ms: float | None = None
    plan: dict | None = None  # --plan: the objective, the chosen plan and runner-up, predicted vs measured

    # JSON -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The JSON form: every measured field, in declaration order (``None`` fields left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, Latency):
                value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        """The record of a JSON dict; unknown or missing keys raise :class:`RecordError`."""
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise RecordError(f"unknown run record key(s) {unknown}; valid keys: {', '.join(KEYS)}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise RecordError(f"run record lacks {missing}, e.g. "
                              '{"model": "decnn_resnet34", "groups": 4, "width": 1.5, "mode": "branch", "devices": 2}')
        data = dict(data)
        if isinstance(data.get("latency_ms"), dict):
            try:
                data["latency_ms"] = Latency(**data["latency_ms"])
            except TypeError as e:
                raise RecordError(f"latency_ms needs p50, p95, p99 (and optionally mean): {e}") from None
        return cls(**data)

    # What the HPARAMS tab shows beside the settings ------------------------------------------------------

    @property
    def architecture(self) -> str:
        return architecture(self.model, self.groups, self.width)

    @property
    def runtime(self) -> str | None:
        """What ran it: "torch" (decnn infer), "torch + onnxruntime" (its ONNX backend) or "edge" (decnn edge)."""
        if self.mode == "train":
            return None
        if self.backend != "onnxruntime":
            return "torch"
        return "torch + onnxruntime" if (self.transport or "").startswith(("gloo", "nccl")) else "edge"

    @property
    def split(self) -> str:
        """The way it ran and what ran it, e.g. "branch · edge", "modnn · torch"."""
        return self.mode if self.runtime is None else f"{self.mode} · {self.runtime}"

    @property
    def boards(self) -> str:
        """The devices and, on emulated boards, each one's share of a core: "4 × 0.5 core"."""
        return f"{self.devices}" + (f" × {self.cpu_fraction:g} core" if self.cpu_fraction else "")

    @property
    def wire(self) -> str | None:
        """What crosses between devices: the link, the exchange's dtype and the batches in flight."""
        if self.devices < 2:
            return None
        return f"{self.link or 'loopback'} · {self.exchange_dtype or 'fp32'} · overlap {self.overlap or 1}"

    @property
    def session(self) -> str | None:
        """A benchmark row's name for the HPARAMS tab's first column; None: the run's folder names it."""
        if self.name is None:
            return None
        return f"{self.name} x{self.devices} b{self.batch} @{self.link or 'loopback'}"

    @property
    def accuracy(self) -> str:
        """Where this row's accuracy comes from."""
        if self.mode == "train":
            return ACCURACY_TRAINING
        if self.top1 is not None:
            return "measured"
        if self.trained_top1 is not None:
            return "training's best"
        return "random weights" if self.checkpoint is None else "not measured"

    # TensorBoard ----------------------------------------------------------------------------------------

    def tensorboard(self) -> tuple[dict, dict[str, float]]:
        """The HPARAMS row: (hparams, metrics), ``None`` fields left out."""
        hparams = {k: getattr(self, k) for k in (*DERIVED_HPARAMS, *HPARAMS) if getattr(self, k) is not None}
        metrics = {tag: float(value) for tag, value in ((tag, _get(self, path)) for tag, path in METRIC_TAGS.items())
                   if value is not None}
        return hparams, metrics

    @classmethod
    def from_tensorboard(cls, hparams: dict, metrics: dict[str, float]) -> RunRecord:
        """The record of an HPARAMS row written by :meth:`tensorboard`, or by ``train.py`` (mode "train", or no
        mode at all in runs of older versions).

        Scalars other than the record's metric tags (the curves a run also logs) are ignored, and so are the
        hparams derived from the record's fields (architecture, accuracy).
        """
        if hparams.get("mode", "train") == "train":
            return _training_record(hparams, metrics)
        hparams = {k: v for k, v in hparams.items() if k not in DERIVED_HPARAMS}
        unknown = sorted(set(hparams) - set(HPARAMS))
        if unknown:
            raise RecordError(f"unknown hparam(s) {unknown} in an inference run; valid: {', '.join(HPARAMS)}")
        values = {k: HPARAMS[k](v) for k, v in hparams.items()}
        latency = {}
        for tag, path in METRIC_TAGS.items():
            if tag in metrics:
                if path[0] == "latency_ms":
                    latency[path[1]] = metrics[tag]
                else:
                    values[path[0]] = METRIC_TYPES.get(path[0], float)(metrics[tag])
        if latency:
            values["latency_ms"] = latency
        return cls.from_dict(values)

    def log_hparams(self, log) -> None:
        """Write the HPARAMS row through a :mod:`decnn.common.logger` logger."""
        log.hparams(*self.tensorboard(), name=self.session)


# The settings that tell runs apart in TensorBoard's HPARAMS tab, with the type each reads back as.
HPARAMS = {"model": str, "groups": int, "width": float, "stem": str, "mode": str, "devices": int, "batch": int,
           "exchange_dtype": str, "backend": str, "transport": str, "overlap": int, "link": str, "name": str,
           "trained_run": str, "cpu_fraction": float}
# Shown beside them, derived from the record's fields (properties of RunRecord): never read back. The tab shows
# five settings before any is ticked: these, which say what a row is (see FIRST_HPARAMS).
DERIVED_HPARAMS = {"architecture": str, "accuracy": str, "split": str, "boards": str, "wire": str}
DISPLAY_NAMES = {"architecture": "architecture (groups, width)", "split": "split · runtime",
                 "boards": "devices × CPU each", "wire": "link · exchange · overlap", "cpu_fraction": "CPU per device"}
# A training run's row (decnn.train.trainer.Trainer.hparams): its settings, beside architecture and mode.
TRAINING_HPARAMS = {"params": int, "flops": int, "image_size": int, "batch_size": int, "optimizer": str,
                    "lr": float, "epochs": int}
ACCURACY_TRAINING = "best val epoch"  # where a training row's accuracy comes from
TRAIN_TOP1, TRAIN_TOP5 = "hparam/best_top1", "hparam/best_top5"  # what train.py logs with its HPARAMS row
# The headline numbers, by TensorBoard tag: the field (or field and key) each comes from. An inference run of a
# checkpoint logs its training's best under train.py's own tags, so both rows fill the same columns.
METRIC_TAGS = {
    TRAIN_TOP1: ("trained_top1",),
    TRAIN_TOP5: ("trained_top5",),
    "infer/latency_p50_ms": ("latency_ms", "p50"),
    "infer/latency_p95_ms": ("latency_ms", "p95"),
    "infer/latency_p99_ms": ("latency_ms", "p99"),
    **{f"infer/{k}": (k,) for k in (
        "throughput_ips", "bytes_per_image", "params_per_device_mb", "peak_rss_mb", "top1", "top5",
        "top1_agreement", "max_abs_diff", "max_rel_diff", "verified", "latency_ratio_vs_resnet34",
        "latency_ratio_vs_decnn_single", "throughput_ratio_vs_resnet34", "throughput_ratio_vs_decnn_single",
        "speedup_vs_one_device", "rss_above_idle_vs_whole",
        "predicted_latency_ms")},
}
# Metrics that read back as another type than TensorBoard's float.
METRIC_TYPES = {"verified": bool}
# Every HPARAMS column, in the order a reader wants them: one experiment for the whole log folder
# (decnn.common.logger.write_experiment), whichever runs it holds. Display names say what each number is.
EXPERIMENT_HPARAMS = {**DERIVED_HPARAMS, **HPARAMS, **TRAINING_HPARAMS}
# Accuracy first, then speed and size: what the tab shows left to right.
EXPERIMENT_METRICS = {
    "infer/top1": "top-1 % (measured in this run)",
    TRAIN_TOP1: "top-1 % (training, best val)",
    "infer/latency_p50_ms": "latency p50 (ms per batch)",
    "infer/throughput_ips": "throughput (images/s)",
    "infer/params_per_device_mb": "params per device (MiB)",
    "infer/speedup_vs_one_device": "latency speed-up vs the same model on 1 device (x)",
    "infer/latency_ratio_vs_resnet34": "latency speed-up vs ResNet-34 on 1 device (x)",
    "infer/latency_ratio_vs_decnn_single": "latency speed-up vs DeCNN on 1 device (x)",
    "infer/throughput_ratio_vs_resnet34": "throughput vs ResNet-34 on 1 device (x)",
    "infer/throughput_ratio_vs_decnn_single": "throughput vs DeCNN on 1 device (x)",
    "infer/top1_agreement": "top-1 agreement with the whole model",
    "infer/latency_p95_ms": "latency p95 (ms per batch)",
    "infer/latency_p99_ms": "latency p99 (ms per batch)",
    "infer/peak_rss_mb": "peak RSS per device (MiB)",
    "infer/rss_above_idle_vs_whole": "RSS above an idle device / the whole model's",
    "infer/bytes_per_image": "activation bytes per image",
    "infer/top5": "top-5 % (measured in this run)",
    TRAIN_TOP5: "top-5 % (training, best val)",
    "infer/predicted_latency_ms": "predicted latency (ms, cost model)",
    "infer/max_abs_diff": "max |logit difference| vs the whole model",
    "infer/max_rel_diff": "max relative logit difference",
    "infer/verified": "verified: within the bound (1) or not (0)",
}
# The settings the tab shows before any is ticked (it shows five): what tells the rows apart.
FIRST_HPARAMS = ("accuracy", "architecture", "split", "boards", "wire")


def architecture(model: str, groups: int, width: float = 1.0) -> str:
    """A network's name as people say it, short enough for a table cell: "resnet34" for the plain one (1 group,
    width 1; timm builds it as "decnn_resnet34"), "resnet34 g4 x1.5" for a DeCNN of 4 groups 1.5 times as wide."""
    return (model.removeprefix("decnn_") + (f" g{groups}" if groups > 1 else "")
            + (f" x{width:g}" if width != 1 else ""))


KEYS = tuple(f.name for f in dataclasses.fields(RunRecord))
REQUIRED = tuple(f.name for f in dataclasses.fields(RunRecord) if f.default is dataclasses.MISSING)


def _get(record: RunRecord, path: tuple[str, ...]):
    value = getattr(record, path[0])
    return getattr(value, path[1]) if value is not None and len(path) > 1 else value


def _training_record(hparams: dict, metrics: dict[str, float]) -> RunRecord:
    """A training run: the whole model on one device; its accuracy is the best val top-1/top-5."""
    params = int(hparams["params"]) if "params" in hparams else None
    return RunRecord(
        model=hparams["model"], groups=int(hparams["groups"]), width=float(hparams["width"]), mode="train",
        devices=1, stem=hparams.get("stem"), batch=int(hparams["batch_size"]) if "batch_size" in hparams else None,
        image_size=int(hparams["image_size"]) if "image_size" in hparams else None,
        params_per_device_mb=params * 4 / MB if params is not None else None,
        top1=metrics[TRAIN_TOP1], top5=metrics.get(TRAIN_TOP5),
    )


def format_table(r: RunRecord) -> str:
    """The console summary: the run, its numbers, and one row per rank."""
    lat = r.latency_ms
    rows = [
        ("run", f"{r.model} G{r.groups} x{r.width:g} {r.stem} stem, mode {r.mode}, {r.devices} device(s), "
                f"batch {r.batch}, overlap {r.overlap}, exchange {r.exchange_dtype}, {r.backend or 'torch'}"
                f"{' over ' + r.transport if r.transport else ''}"),
        ("images", f"{r.images} of {r.image_size}x{r.image_size} (+{r.warmup} warm-up steps, not timed)"),
        ("latency / batch", f"p50 {lat.p50:.2f} ms  p95 {lat.p95:.2f} ms  p99 {lat.p99:.2f} ms"),
        ("throughput", f"{r.throughput_ips:.1f} images/s"),
        ("bytes / image", f"{r.bytes_per_image:,.0f} activations"
                          + (f" in {r.exchanges_per_batch} exchanges" if r.exchanges_per_batch is not None else "")
                          + f" ({', '.join(f'{b:,.0f}' for b in r.bytes_per_image_per_point) or '-'}), "
                          f"{r.input_bytes_per_image:,.0f} input, {r.result_bytes_per_image:,.0f} results"),
    ]
    if r.bytes_saved_vs_fp32:
        rows.append(("saved vs fp32", f"{r.bytes_saved_vs_fp32 * 100:.1f}% of the activation bytes"))
    if r.predicted_latency_ms is not None:
        rows.append(("cost model", f"predicted {r.predicted_latency_ms:.2f} ms per batch (compute "
                                   f"{r.predicted_compute_ms:.2f} + transfers {r.predicted_transfer_ms:.2f}), measured "
                                   f"{r.measured_for_prediction_ms:.2f}"))
    if r.top1_agreement is not None:
        verdict = ("" if r.verified is None
                   else f"; {'verified' if r.verified else 'NOT verified'} (bound {r.verify_bound:g})")
        rows.append(("vs monolithic", f"max |dlogit| {r.max_abs_diff:.2e} ({r.max_rel_diff:.1e} of the largest "
                                      f"logit), top-1 agreement {r.top1_agreement * 100:.2f}%{verdict}"))
    if r.top1 is not None:
        rows.append(("accuracy", f"top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%"))
    if r.run_dir is not None:
        rows.append(("tensorboard", r.run_dir))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"{'rank':>4} {'params MB':>10} {'peak RSS MB':>12} {'threads':>8} {'cores':>8}   "
                 "ms per batch: step = segments + head + normalize + pack + codec + peer wait + wire + other")
    for i, b in enumerate(r.breakdown_per_rank):
        cores = ",".join(map(str, r.cores_per_rank[i]))
        segments = "+".join(f"{t:.1f}" for t in b["segments_ms"])
        lines.append(
            f"{i:>4} {r.params_per_rank[i] / MB:>10.2f} {r.peak_rss_per_rank[i] / MB:>12.1f} "
            f"{r.threads_per_rank[i]:>8} {cores:>8}   {b['step_ms']:.1f} = ({segments}) + {b['head_ms']:.2f} "
            f"+ {b['normalize_ms']:.2f} + {b['pack_ms']:.2f} + {b['codec_ms']:.2f} + {b['peer_wait_ms']:.2f} "
            f"+ {b['wire_ms']:.2f} + {b['other_ms']:.2f}"
        )
    return "\n".join(lines)
