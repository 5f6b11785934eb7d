"""A Hydra callback that writes the comparison report when a multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dsconv.report.cli import main as report_main

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        try:
            report_main([str(sweep_dir)])
        except Exception as exc:  # a report failure must not hide the sweep's own results
            log.warning("report for %s failed: %s", sweep_dir, exc)
