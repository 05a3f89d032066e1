"""Fixtures of the reliability tests: the PostgreSQL server of the search tests (shared, not copied) and
one finished run of the tiny model that the run and deploy tests copy."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_fixtures import recipe_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "search"))

from test_postgres_workers import postgres_url  # noqa: E402

from .helpers import RUN_ID, write_recipe  # noqa: E402

__all__ = ["base", "postgres_url"]


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_csv: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A finished run (int8 max, no benchmark) under umask 022; tests work on copies (helpers.copy_run)."""
    folder = tmp_path_factory.mktemp("base_run")
    data = recipe_dict(folder, tiny_bert_dir, tiny_csv)
    # the smallest run that still has every stage: what is tested is the state on disk, not the numbers
    data["data"].update(calibration_samples=16, probe_samples=30, eval_samples=20)
    data["export"]["fidelity_samples"] = 4
    data["benchmark"]["enabled"] = False
    old = os.umask(0o022)
    try:
        from quant_workbench.cli import main

        assert main([str(write_recipe(folder, data)), "--no-progress", "--run-id", RUN_ID]) == 0
    finally:
        os.umask(old)
    yield folder, data
