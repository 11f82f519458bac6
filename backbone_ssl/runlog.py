"""``RUN/metrics.csv`` that survives ``--resume`` (Lightning's CSVLogger deletes it on restart)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from backbone_ssl.io import write_text_atomic


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, appending to an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = list(header)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``RUN/metrics.csv`` and ``RUN/hparams.yaml`` directly in the run dir."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def truncate_metrics(metrics_csv: str | os.PathLike, last_step: int) -> int:
    """Drop rows logged after ``last_step`` (work lost by a kill, redone on resume).

    Returns the number of rows dropped.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) <= last_step]
    if len(keep) == len(rows):
        return 0
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(keep)
    write_text_atomic(path, buf.getvalue())
    return len(rows) - len(keep)
