"""Shared fixtures; the helpers themselves live in ``tests/support/``."""

from __future__ import annotations

import pytest
from support.stages import Stages


@pytest.fixture
def make_stages(tmp_path):
    """``make_stages(toml="", **overrides) -> Stages`` on a directory of the test's own;
    every one made is closed (its processes stopped, its shared memory removed) after
    the test."""
    made: list[Stages] = []

    def make(toml: str = "", **overrides) -> Stages:
        stages = Stages(tmp_path / f"x{len(made)}", toml, **overrides)
        made.append(stages)
        return stages

    yield make
    for stages in made:
        stages.close()


@pytest.fixture(autouse=True, scope="session")
def _run_dir(tmp_path_factory):
    """Exchanges started by tests leave their run-file pointers (``ringex.runfile``) in a
    directory of this session, not the user's: a client command run by a test finds
    only the exchanges of this session."""
    import os

    os.environ["RINGEX_RUN_DIR"] = str(tmp_path_factory.mktemp("run"))
