"""A first start as a new user meets it: time from ``ringex up`` to "accepting orders"
with numba's cache empty (the matching kernels compile), then a second start on the
same copy (they load from the cache).

The package is copied without its ``__pycache__`` to a temporary directory and run
from there (``PYTHONPATH``), so the checkout's own cache is neither used nor touched.
Each start gets free ports and its own data directory. Prints both starts' times and
what ``ringex up`` printed on the cold one; writes ``perf/results/cold_start.json``.

    .venv/bin/python perf/cold_start.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from tests.support.net import free_ports  # noqa: E402

RESULTS = HERE / "results" / "cold_start.json"
READY = "stop with Ctrl-C"


def start_once(package_root: Path, data: Path, timeout: float) -> tuple[float, str]:
    """Seconds from spawning ``ringex up`` to its banner's last line, and its output."""
    order, md, ws, fix = free_ports(4)
    cmd = [sys.executable, "-m", "ringex", "up", "--data", str(data), "--durability", "fsync"]
    cmd += ["--order-port", str(order), "--md-port", str(md), "--ws-port", str(ws), "--fix-port", str(fix)]
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    env.pop("NUMBA_CACHE_DIR", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=package_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = ""
    try:
        while READY not in out:
            if time.monotonic() - t0 > timeout or proc.poll() is not None:
                raise RuntimeError(f"ringex up did not come up:\n{out}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536).decode()
        return time.monotonic() - t0, out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a start may take")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringex-cold-") as tmp:
        root = Path(tmp)
        shutil.copytree(ROOT / "ringex", root / "ringex", ignore=shutil.ignore_patterns("__pycache__"))
        load = os.getloadavg()[0]
        cold_s, cold_out = start_once(root, root / "data-cold", args.timeout)
        warm_s, _ = start_once(root, root / "data-warm", args.timeout)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": round(load, 2)},
        "cold_start_s": round(cold_s, 1),
        "warm_start_s": round(warm_s, 1),
        "cold_start_printed": cold_out,
    }
    print(cold_out)
    print(f"cold first start (kernels compiled): {cold_s:.1f} s to ready; second start (cached): {warm_s:.1f} s")
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
