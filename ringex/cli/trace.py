"""``ringex trace``: where the time goes, stage by stage, for the sampled requests.

An exchange started with ``trace_every = N`` (config, or ``RINGEX_TRACE_EVERY=N``)
notes when every N-th command of each symbol passed each stage (``ringex.trace``);
this prints each stage's delay after the gateway received the request.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ringex.cli.common import data_dir_of
from ringex.trace import read_traces, stage_latencies

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="data directory (default: the config's data_dir)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file, for its data_dir")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    latencies = stage_latencies(read_traces(data_dir))
    if not latencies:
        print(
            f"ringex trace: no trace records in {data_dir}/trace (start the exchange with trace_every = N "
            "in its config, or RINGEX_TRACE_EVERY=N)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(latencies))
        return 0
    table = Table(title="delay after the gateway received the request, µs (sampled requests)")
    for column in ("stage", "n", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, s in latencies.items():
        table.add_row(stage, str(s["n"]), *(f"{s[k]:,.1f}" for k in ("p50", "p90", "p99", "max")))
    Console().print(table)
    return 0
