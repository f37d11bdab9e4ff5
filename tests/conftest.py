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
