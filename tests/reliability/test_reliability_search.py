"""Finding 2: a resumed search must not repeat finished configurations, must re-run the interrupted
trial first, and `max_trials` counts distinct configurations (one worker, and several on one study).

The runner is a stand-in that scores a configuration from its key in microseconds: what is tested is
the study's bookkeeping (run_study), not the model.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import pytest
from tiny_fixtures import recipe_dict

from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.config.search import SearchSpec
from quant_workbench.core.artifacts import hash_json
from quant_workbench.search.groups import LayerGroup
from quant_workbench.search.sensitivity import Config, TrialRecord, TrialRunner
from quant_workbench.search.study import WORKER_ATTR, config_params, normalize_storage, run_study, suggest

GROUPS = [LayerGroup(f"layer{i}", "layer", (f"encoder.layer.{i}",)) for i in range(3)]
# 2 methods x 2^3 float-group choices = 16 configurations; budgets below stay under it
SPEC = {"methods": ["max", "mse"], "groups": ["layer"], "objectives": ["accuracy", "latency"], "sensitivity": False, "fallback": False, "sampler": "random", "seed": 0}


def config_key(config: Config) -> str:
    """The test's own notion of 'the same configuration' (independent of the code under test)."""
    return hash_json(asdict(config))


def trial_config_key(t: Any) -> str | None:
    try:
        return config_key(suggest(optuna.trial.FixedTrial(dict(t.params)), SearchSpec(**{**SPEC, "max_trials": 1}), GROUPS))
    except Exception:
        return None


class FakeRunner(TrialRunner):  # TrialRunner.__init__ loads a model; run_study uses only the members set here
    def __init__(self, tmp: Path, max_trials: int) -> None:
        data = recipe_dict(tmp, tmp, tmp / "x.csv")
        data["search"] = {**SPEC, "max_trials": max_trials}
        self.recipe = recipe_from_dict(data)
        self.spec: SearchSpec = self.recipe.search  # type: ignore[assignment]
        self.groups = GROUPS
        self.evaluated: list[str] = []

    def evaluate(self, config: Config, source: str, trial_number: int | None = None) -> TrialRecord:
        key = config_key(config)
        self.evaluated.append(key)
        score = int(hash_json(key)[:6], 16) / float(1 << 24)
        return TrialRecord(source=source, config=config, accuracy=0.5 + score / 2, p50_ms=1.0 + score, float_p50_ms=2.0, size_bytes=1000, trial_number=trial_number)


def _counted(trials: list[Any]) -> list[Any]:
    return [t for t in trials if t.state.name == "COMPLETE" or (t.state.name == "FAIL" and "error" in t.user_attrs)]


def _keys(trials: list[Any]) -> list[str | None]:
    return [trial_config_key(t) for t in trials]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resumed_study_reruns_the_interrupted_trial_first_and_repeats_nothing(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = FakeRunner(tmp_path, max_trials=3)
    run_study(first, storage, "s", say=lambda _: None)
    # kill -9 in the 4th trial: it is RUNNING with its parameters drawn, owned by a worker that is gone
    study = optuna.load_study(study_name="s", storage=storage)
    done_before = {k for k, t in zip(_keys(study.get_trials()), study.get_trials(), strict=True) if t.state.name == "COMPLETE"}
    # the killed trial's configuration is one that has not run yet (else re-running it would be a repeat)
    fresh = next(c for m in ("max", "mse") for n in range(8)
                 if config_key(c := Config(m, None, tuple(g.name for i, g in enumerate(GROUPS) if n >> i & 1))) not in done_before)
    study.enqueue_trial(config_params(fresh, GROUPS, first.spec))
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{_dead_pid()}")
    interrupted_config = suggest(trial, first.spec, GROUPS)
    assert config_key(interrupted_config) == config_key(fresh)

    resumed = FakeRunner(tmp_path, max_trials=6)
    run_study(resumed, storage, "s", say=lambda _: None)

    assert resumed.evaluated[0] == config_key(interrupted_config)  # the interrupted configuration runs first
    assert not set(resumed.evaluated) & done_before  # no finished configuration is run again
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    counted = _counted(trials)
    keys = _keys(counted)
    assert len(counted) == 6 and len(set(keys)) == 6  # the budget is 6 distinct configurations
    assert [t.state.name for t in trials if "interrupted" in t.user_attrs] == ["FAIL"]


def test_a_study_never_runs_a_finished_configuration_even_when_the_sampler_repeats(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for budget in (2, 4, 6):  # three restarts; today's code re-seeds each with search.seed and repeats
        run_study(FakeRunner(tmp_path, max_trials=budget), storage, "s", say=lambda _: None)
    counted = _counted(optuna.load_study(study_name="s", storage=storage).get_trials())
    keys = _keys(counted)
    assert len(counted) == 6 and len(set(keys)) == 6 and None not in keys


def test_an_exhausted_search_space_stops_instead_of_spinning(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    runner = FakeRunner(tmp_path, max_trials=40)  # more than the 16 configurations that exist
    said: list[str] = []
    run_study(runner, storage, "s", say=said.append)
    counted = _counted(optuna.load_study(study_name="s", storage=storage).get_trials())
    assert len(set(_keys(counted))) == len(counted) <= 16
    assert len(runner.evaluated) == len(set(runner.evaluated))
    assert any("exhausted" in line for line in said)


def _worker(tmp: str, storage: str, budget: int) -> None:
    run_study(FakeRunner(Path(tmp), max_trials=budget), storage, "shared", say=lambda _: None)


def _two_workers(tmp_path: Path, storage: str) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), storage, 10)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rdb = optuna.storages.RDBStorage(normalize_storage(storage))
    trials = optuna.load_study(study_name="shared", storage=rdb).get_trials()
    rdb.engine.dispose()  # an open pooled connection would keep the PostgreSQL fixture's shutdown waiting
    counted = _counted(trials)
    keys = _keys(counted)
    assert len(counted) == 10 and len(set(keys)) == 10  # two workers, one budget of distinct configurations
    assert len({t.user_attrs.get(WORKER_ATTR) for t in counted}) >= 1


def test_two_workers_on_one_sqlite_study_share_the_budget_without_repeats(tmp_path: Path) -> None:
    _two_workers(tmp_path, f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.skipif(not os.path.isdir("/usr/lib/postgresql"), reason="PostgreSQL server binaries not installed")
def test_two_workers_on_one_postgres_study_share_the_budget_without_repeats(tmp_path: Path, postgres_url: str) -> None:
    _two_workers(tmp_path, postgres_url)
