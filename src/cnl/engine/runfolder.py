"""A run's folder: every file ``cnl train`` writes there, named once, and its JSON records
read back as data, a damaged one named in one line.

```
RUN/config.yaml            the settings (cnl train --config RUN/config.yaml trains it again)
RUN/metrics.jsonl          one JSON object per finished epoch
RUN/summary.json           the run's results, written when it ends
RUN/predictions.csv        each test (and validation) image's answer at the best epoch
RUN/skipped.txt            unreadable images that were skipped
RUN/checkpoints/last.pt    the newest state (last-prev.pt: the one before), best.pt: the best epoch
RUN/tensorboard/           the curves, for TensorBoard
RUN/eval/                  cnl eval --report's evidence (cnl report reads it)
RUN/.lock                  held by the process that trains there
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnl.errors import DataError, excerpt


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
    def lock(self) -> Path:
        return self.root / ".lock"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint belongs to: ``RUN/checkpoints/best.pt`` -> ``RUN``; a checkpoint
        elsewhere stands for the folder it is in."""
        path = Path(checkpoint)
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` as a mapping, None when the run has not written one."""
        if not self.summary.exists():
            return None
        summary = read_json(self.summary)
        if not isinstance(summary, dict):
            raise DataError(f"{self.summary} is damaged: it holds {type(summary).__name__}, not a run's summary")
        return summary

    def read_metrics(self) -> list[dict[str, Any]]:
        """Each line of ``metrics.jsonl`` (an epoch's record); a damaged line is named."""
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
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise DataError(f"{self.metrics}, line {number}: not an epoch's record: {excerpt(record)}")
            records.append(record)
        return records


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
