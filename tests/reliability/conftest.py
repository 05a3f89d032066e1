"""Fixtures of the reliability tests: the PostgreSQL server of the search tests (shared, not copied)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "search"))

from test_postgres_workers import postgres_url  # noqa: E402

__all__ = ["postgres_url"]
