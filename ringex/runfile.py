"""Where a running exchange says it runs, so every client command finds it the same way.

``ringex up`` writes two files while it runs and removes both when it stops:

- the *run file*, ``<data_dir>/ringex.run.json``: the supervisor's pid, the data
  directory, the topology (for ``ringex status``), where it listens (host and the ports
  it bound), its durability, its log file and its state (``starting``, then ``ready``);
- a *pointer* in the user's run directory (``$RINGEX_RUN_DIR``, else
  ``$XDG_RUNTIME_DIR/ringex``, else ``~/.local/state/ringex/run``), named by a hash of
  the data directory, holding the same document. A client started in any directory
  finds the exchange through it when it is told neither ``--data`` nor ``--config``.

A file whose pid is no longer alive is stale (a supervisor killed with -9): readers
treat it as absent, and the next ``ringex up`` on that data directory replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = [
    "RUN_FILE",
    "run_dir",
    "write_run_file",
    "read_run_file",
    "remove_run_file",
    "running_exchanges",
    "pid_alive",
]

RUN_FILE = "ringex.run.json"


def run_dir() -> Path:
    """The user's directory of pointers to running exchanges."""
    explicit = os.environ.get("RINGEX_RUN_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "ringex"
    return Path.home() / ".local" / "state" / "ringex" / "run"


def _pointer(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return run_dir() / f"{digest}.json"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or, when we may not signal it, someone else's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def write_run_file(data_dir: str | os.PathLike[str], info: dict) -> None:
    """Write (or rewrite, as the state changes) the run file and the user's pointer.
    The pointer is best effort: a run directory that cannot be written only means
    clients elsewhere need ``--data``."""
    data = Path(data_dir)
    _write(data / RUN_FILE, info)
    try:
        _write(_pointer(data), info)
    except OSError:
        pass


def remove_run_file(data_dir: str | os.PathLike[str]) -> None:
    data = Path(data_dir)
    (data / RUN_FILE).unlink(missing_ok=True)
    try:
        _pointer(data).unlink(missing_ok=True)
    except OSError:
        pass


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError):
        return None
    if not isinstance(doc, dict) or not pid_alive(int(doc.get("pid", 0))):
        return None
    return doc


def read_run_file(data_dir: str | os.PathLike[str]) -> dict | None:
    """The run file of the exchange running on ``data_dir``, or None (none, or stale)."""
    return _read(Path(data_dir) / RUN_FILE)


def running_exchanges() -> list[dict]:
    """Every exchange of this user that is running, from the pointers (stale ones skipped)."""
    folder = run_dir()
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    found = []
    for path in paths:
        doc = _read(path)
        if doc is not None and read_run_file(doc.get("data_dir", "")) is not None:
            found.append(doc)
    return found
