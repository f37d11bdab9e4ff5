"""What every ``ringex`` subcommand shares: finding the exchange's data directory."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["data_dir_of"]


def data_dir_of(args: argparse.Namespace) -> Path:
    """``--data``, else the data directory of ``--config`` (and ``RINGEX_DATA_DIR``),
    else the default one."""
    if getattr(args, "data", None):
        return Path(args.data)
    from ringex.config import load_config

    return load_config(getattr(args, "config", None)).data_path
