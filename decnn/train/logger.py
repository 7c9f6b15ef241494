"""One logger object for metrics: TensorBoard on the main rank, a null logger everywhere else.

Callers log unconditionally (``log.scalar("val/top1", acc, epoch)``); on a rank that must not write,
``make_logger(..., enabled=False)`` returns a ``NullLogger`` whose methods do nothing.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class NullLogger:
    """Accepts every call and writes nothing."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, s: str) -> None:
        pass

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardLogger(NullLogger):
    """Writes TensorBoard event files into ``log_dir``."""

    def __init__(self, log_dir: str | Path):
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, s: str) -> None:
        self.writer.add_text(tag, s)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """One row of the HPARAMS tab. ``run_name="."`` keeps it in this run's folder, not a sub-run."""
        self.writer.add_hparams(hparams, metrics, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_logger(log_dir: str | Path, enabled: bool = True) -> NullLogger:
    """A TensorBoard logger writing to ``log_dir``, or a ``NullLogger`` when not ``enabled``."""
    return TensorBoardLogger(log_dir) if enabled else NullLogger()
