"""A run's folder: every file ``cnl train`` writes there, named once, and its JSON records
read back as data, a damaged one named in one line.

```
RUN/config.yaml            the settings (cnl train --config RUN/config.yaml trains it again)
RUN/metrics.jsonl          one JSON object per finished epoch
RUN/summary.json           the run's results, written when it ends
RUN/predictions.csv        each test (and validation) image's answer at the best epoch
RUN/skipped.txt            unreadable images that were skipped
RUN/checkpoints/last.pt    the newest state (last-prev.pt: the one before), best.pt: the best epoch
                           (best-eNNN.pt: the N best epochs, with --keep-best N)
RUN/tensorboard/           the curves, for TensorBoard
RUN/eval/                  cnl eval --report's evidence (cnl report reads it; evaluation.json:
                           its figures and views, which cnl export's model card shows)
RUN/features/              --cache-features: each split's frozen features (NAME-DIGEST.pt)
RUN/.lock                  held by the process that trains there
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnl.data.policies import TTA_MODES
from cnl.engine.config import RESUME_CHOICES
from cnl.engine.records import EpochRecord, Summary
from cnl.errors import DataError

EVALUATION = "evaluation.json"  # cnl eval --report: the figures and how they were taken


class RunFolder:
    """The paths of one run, and its records read back."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def kept(self, epoch: int) -> Path:
        """One of the N best checkpoints (``--keep-best N``)."""
        return self.checkpoints / f"best-e{epoch:03d}.pt"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.txt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def evidence(self) -> Path:
        return self.root / "eval"

    @property
    def features(self) -> Path:
        """``--cache-features``: each split's features, named by what they depend on."""
        return self.root / "features"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint belongs to: ``RUN/checkpoints/best.pt`` -> ``RUN``; a checkpoint
        elsewhere stands for the folder it is in."""
        path = Path(checkpoint)
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    def read_summary(self) -> Summary | None:
        """``summary.json``, each field checked; None when the run has not written one."""
        if not self.summary.exists():
            return None
        return Summary.checked(read_json(self.summary), f"{self.summary} is damaged")

    def write_summary(self, summary: Summary) -> None:
        self.summary.write_text(json.dumps(summary.to_json(), indent=2) + "\n")

    def append_epoch(self, record: EpochRecord) -> None:
        with open(self.metrics, "a", encoding="utf-8") as log:
            log.write(_line(record))

    def keep_epochs(self, completed: int) -> None:
        """``metrics.jsonl`` without the epochs past ``completed`` (a resumed run trains them again)."""
        if self.metrics.exists():
            kept = [record for record in self.read_metrics() if record.epoch <= completed]
            self.metrics.write_text("".join(_line(record) for record in kept), encoding="utf-8")

    def read_evaluation(self) -> dict[str, Any] | None:
        """``eval/evaluation.json`` (``cnl eval --report RUN/eval``): figures and how they were
        taken, each field checked; None when there is none."""
        path = self.evidence / EVALUATION
        if not path.exists():
            return None
        said = read_json(path)
        numbers_ok = isinstance(said, dict) and all(
            isinstance(said.get(key), int | float) and not isinstance(said.get(key), bool) and 0 <= said[key] <= 100
            for key in ("top1", "top5")
        )
        views_ok = (
            numbers_ok
            and said.get("tta") in TTA_MODES
            and all(
                isinstance(said.get(key), int) and not isinstance(said.get(key), bool) and 0 < said[key] <= 8192
                for key in ("eval_crop", "eval_resize")
            )
        )
        if not views_ok:
            raise DataError(
                f"{path} is damaged: expected top1 and top5 in [0, 100], tta one of {', '.join(TTA_MODES)} "
                "and eval_crop and eval_resize in pixels, as cnl eval --report writes them"
            )
        return said

    def read_metrics(self) -> list[EpochRecord]:
        """Each line of ``metrics.jsonl`` (an epoch's record), each field checked; a damaged line is named."""
        if not self.metrics.exists():
            return []
        records = []
        for number, line in enumerate(read_text(self.metrics).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{self.metrics}, line {number}: not JSON ({error.msg})") from None
            records.append(EpochRecord.checked(record, f"{self.metrics}, line {number}"))
        return records


def _line(record: EpochRecord) -> str:
    return json.dumps(record.to_json()) + "\n"


def read_text(path: Path) -> str:
    """A text file cnl wrote, as UTF-8; other bytes are one line naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is damaged: not UTF-8 text (byte {error.start})") from None


def read_json(path: Path) -> Any:
    """A JSON file cnl wrote; damage is one line naming the file and where."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged: not JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DataError(f"{path} is damaged: nested too deeply to be one of cnl's files") from None


def run_folder_of(resume: str | None) -> str | None:
    """The run folder a ``--resume PATH`` checkpoint belongs to (RUN/checkpoints/last.pt -> RUN)."""
    if resume is None or resume in RESUME_CHOICES:
        return None
    return str(RunFolder.of_checkpoint(resume).root)
