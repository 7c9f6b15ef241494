"""One logger object for metrics: TensorBoard on the main rank, a null logger everywhere else.

Callers log unconditionally (``log.scalar("val/top1", acc, epoch)``); on a rank that must not write,
``make_logger(..., enabled=False)`` returns a ``NullLogger`` whose methods do nothing.

TensorBoard's HPARAMS tab is written the way its hparams API means it: each run logs one session (its
hparams, then its metrics as scalars) into its own folder, and the log root (``runs/``, above ``train/``,
``infer/`` and ``bench/``) holds the one experiment that lists every column (:func:`write_experiment`), so
the tab shows the same columns whichever runs TensorBoard reads first. Only the ``tensorboard`` package is
used, not torch: a process that never imports torch can log too.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter

from decnn.common.record import DISPLAY_NAMES, EXPERIMENT_HPARAMS, EXPERIMENT_METRICS, FIRST_HPARAMS

# The experiment's event file in the log root: one fixed name, so that rewriting it replaces it.
EXPERIMENT_FILE = "events.out.tfevents.decnn-experiment"


class NullLogger:
    """Accepts every call and writes nothing."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, s: str) -> None:
        pass

    def hparams(self, hparams: dict, metrics: dict[str, float], name: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLogger(NullLogger):
    """Writes TensorBoard event files into ``log_dir``; its HPARAMS row joins the experiment of ``log_root``
    (written there, if it is not already), or, without a log root, stands alone."""

    def __init__(self, log_dir: str | Path, log_root: str | Path | None = None):
        self.log_dir, self.log_root = Path(log_dir), log_root
        self.writer = EventFileWriter(str(log_dir))

    def _write(self, summary: Summary, step: int = 0) -> None:
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        # simple_value, as torch's SummaryWriter writes it: EventAccumulator reads it back as a scalar
        self._write(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def text(self, tag: str, s: str) -> None:
        self._write(text_pb(tag, s))

    def hparams(self, hparams: dict, metrics: dict[str, float], name: str | None = None) -> None:
        """This run's row of the HPARAMS tab: a session with ``hparams``, then ``metrics`` as scalars; ``name``
        (a benchmark row's) comes first in its first column, before the run's folder."""
        root = Path(self.log_root) if self.log_root is not None else self.log_dir.parent
        # The session's group is the run itself: two runs with equal settings stay two rows.
        trial = os.path.relpath(self.log_dir, root)
        # unset (a VGG's stem): an empty cell; counts as text, which the tab shows without decimals
        hparams = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in hparams.items()
                   if v is not None}
        self._write(hp.hparams_pb(hparams, trial_id=f"{name} · {trial}" if name else trial))
        self.scalars(metrics, 0)
        self.writer.flush()
        if self.log_root is not None:
            write_experiment(self.log_root)

    def close(self) -> None:
        self.writer.close()


def make_logger(log_dir: str | Path, enabled: bool = True, log_root: str | Path | None = None) -> NullLogger:
    """A TensorBoard logger writing to ``log_dir``, or a ``NullLogger`` when not ``enabled``."""
    return TensorBoardLogger(log_dir, log_root) if enabled else NullLogger()


def experiment_root(runs_of_a_kind: str | Path) -> Path:
    """The log root of the runs a command writes under ``runs_of_a_kind`` (``runs/train``, ``runs/infer``,
    ``runs/bench``): the folder above it, which ``tensorboard --logdir`` opens; a folder with nothing above
    it (``--log-dir myruns``) is its own root."""
    folder = Path(runs_of_a_kind)
    return folder.parent if folder.parent != Path(folder.anchor or ".") else folder


def experiment_summary() -> Summary:
    """The HPARAMS experiment: every setting and metric any decnn run logs (decnn.common.record's lists). The tab
    shows five settings at first, those marked ``differs`` first: the ones that say what a row is. Counts are
    text, so that the tab shows "2", not "2.0000"."""
    types = {str: api_pb2.DATA_TYPE_STRING, int: api_pb2.DATA_TYPE_STRING, float: api_pb2.DATA_TYPE_FLOAT64}
    hparams = [api_pb2.HParamInfo(name=name, display_name=DISPLAY_NAMES.get(name, name), type=types[kind],
                                  differs=name in FIRST_HPARAMS) for name, kind in EXPERIMENT_HPARAMS.items()]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=name)
               for tag, name in EXPERIMENT_METRICS.items()]
    experiment = api_pb2.Experiment(hparam_infos=hparams, metric_infos=metrics)  # no time: the same bytes every time
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=content, tensor=metadata.NULL_TENSOR)])


def write_experiment(log_root: str | Path) -> Path:
    """Write the experiment into ``log_root`` unless it is there already; idempotent, and atomic (written
    to a temporary file, then renamed), so runs logging at the same time all leave one whole file."""
    path = Path(log_root) / EXPERIMENT_FILE
    events = [Event(wall_time=0.0, file_version="brain.Event:2"), Event(wall_time=0.0, summary=experiment_summary())]
    buffer = io.BytesIO()
    records = RecordWriter(buffer)  # the TFRecord framing every event file uses
    for event in events:
        records.write(event.SerializeToString())
    if path.exists() and path.read_bytes() == buffer.getvalue():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".experiment-")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)
    return path
