"""A run's logbook: each epoch's record and the run's summary, told in every place they go
(metrics.jsonl, TensorBoard, the console, summary.json). The run (engine/trainer.py) trains,
resumes and answers signals, and hands the logbook records; where they go is said here.
Only the main process keeps one: the others' logbooks write nothing."""

from __future__ import annotations

from typing import Any

from cnl.engine.records import EpochRecord, Summary
from cnl.engine.runfolder import RunFolder

# The curves TensorBoard shows, each a field of EpochRecord.
CURVES = ("lr", "train_loss", "train_top1", "train_images_per_s", "val_top1", "test_loss", "top1", "top5")


class Logbook:
    """``with Logbook(folder, epochs, main) as logbook: logbook.epoch(record)``."""

    def __init__(self, folder: RunFolder, epochs: int, main: bool) -> None:
        self.folder = folder
        self.epochs = epochs
        self.main = main
        self.writer: Any = None

    def __enter__(self) -> Logbook:
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder.tensorboard))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def epoch(self, record: EpochRecord) -> None:
        """A finished epoch: a line of metrics.jsonl, a point on each curve, a console line."""
        if not self.main:
            return
        self.folder.append_epoch(record)
        for key in CURVES:
            if getattr(record, key) is not None:
                self.writer.add_scalar(key, getattr(record, key), record.epoch)
        self.writer.flush()
        print(console_line(record, self.epochs), flush=True)

    def summary(self, summary: Summary) -> None:
        if self.main:
            self.folder.write_summary(summary)


def console_line(record: EpochRecord, epochs: int) -> str:
    """The console's line for an epoch: ``epoch 3/20  lr 1.00e-01  train loss ... top1 ...
    [val top1 ...]  test loss ... top1 ... top5 ...  N img/s``."""
    val = f"val top1 {record.val_top1:.2f}  " if record.val_top1 is not None else ""
    return (
        f"epoch {record.epoch}/{epochs}  lr {record.lr:.2e}  "
        f"train loss {record.train_loss:.4f} top1 {record.train_top1:.2f}  {val}"
        f"test loss {record.test_loss:.4f} top1 {record.top1:.2f} top5 {record.top5:.2f}  "
        f"{record.train_images_per_s:.1f} img/s"
    )
