"""Logging for every ringex process: one line per notable event, to stderr and to
``<data_dir>/ringex.log``, at the level the config sets.

Each process opens the file in append mode and writes whole lines, so the
supervisor's and its children's lines interleave without tearing (O_APPEND writes of
a line are atomic on a local filesystem).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ringex.config import Config

__all__ = ["setup_logging", "LOG_FILE"]

LOG_FILE = "ringex.log"
_FORMAT = "%(asctime)s %(process)d {role} %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config, role: str, *, to_stderr: bool = True) -> Path:
    """Configure the root logger for a process playing ``role``; returns the log file path."""
    path = Path(config.data_dir) / LOG_FILE
    os.makedirs(path.parent, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT.format(role=role))
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="a", encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    return path
