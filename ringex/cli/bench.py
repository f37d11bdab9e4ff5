"""``ringex bench``: the end-to-end latency sweep of ringex against the single-process
baseline, from a source checkout.

The harness (the compiled load generator, the baseline exchange, the analysis) lives in
the checkout's ``perf/`` directory, outside the package: an installed ringex does not
carry it, and its dependencies (``hdrhistogram``, ``matplotlib``, ``sortedcontainers``)
are the ``perf`` extra. This module only finds ``perf/`` and hands the command line to
``perf/e2e.py`` (see there for what it measures); ``python perf/e2e.py`` is the same
sweep, writing the committed results.

    ringex bench                                   # both modes, every rate, printed
    ringex bench --quick                           # a smoke run
    ringex bench --rates 1k,10k --durability async --json /tmp/run.json --plot /tmp/run.png
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

__all__ = ["add_arguments", "run", "checkout"]

_NO_CHECKOUT = (
    "ringex bench: the benchmark harness is in perf/ of a source checkout, which this installation "
    "does not have.\nClone the repository, run `pip install -e '.[perf]'` there (or bin/bootstrap), then "
    "`ringex bench` or `python perf/e2e.py`."
)


def checkout() -> Path | None:
    """The source checkout this ringex runs from (the directory holding ``perf/e2e.py``
    next to the package), or None for an installed copy."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "perf" / "e2e.py").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    return None


def _e2e():
    root = checkout()
    if root is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("perf.e2e")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("hdrh", "matplotlib", "sortedcontainers"):
            raise SystemExit(f"ringex bench: {exc.name} is missing: pip install -e '{root}[perf]'") from None
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    e2e = _e2e()
    if e2e is None:  # nothing to parse the options with: say so before argparse rejects them
        print(_NO_CHECKOUT, file=sys.stderr)
        raise SystemExit(2)
    e2e.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    e2e = _e2e()
    if e2e is None:
        print(_NO_CHECKOUT, file=sys.stderr)
        return 2
    return e2e.run(args)
