"""The search stage: baselines -> sensitivity -> automatic fallback -> Optuna study -> Pareto front ->
the fastest configuration meeting the criterion -> `best/`; its variants join the run's own evaluate,
benchmark, select and report stages, and its summary becomes the report's Search section.

The study lives in Optuna's RDB storage: SQLite in the run folder by default (a killed search,
restarted with the same command, resumes with every finished trial), or any SQLAlchemy URL such as
`postgresql://...` so that several workers share one study. The budget (`max_trials`) counts the
finished trials of all workers together; each worker decides by trial number, so workers never
overshoot it. Trials interrupted by a dead worker on this host are marked failed (`interrupted`)
and do not count;
their configurations run again first. A resumed worker seeds its sampler from the study's state and
never runs a configuration that another trial already finished (dedupe on `config_key`), so
`max_trials` counts distinct configurations.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from quant_workbench.config.recipe import DEFAULT_SPEED_MARGIN, Recipe
from quant_workbench.config.search import SearchSpec, scheme_label
from quant_workbench.core.artifacts import hash_json, pid_alive, write_json
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.core.results import VariantResult
from quant_workbench.quantize.apply import apply_flags
from quant_workbench.quantize.schemes import SmoothQuantInputs
from quant_workbench.search.groups import LayerGroup
from quant_workbench.search.sensitivity import (
    Config,
    FallbackResult,
    SensitivityRow,
    TrialRecord,
    TrialRunner,
    auto_fallback,
    sensitivity,
)

if TYPE_CHECKING:  # the search stage reads the run's state; the pipeline imports the search, not back
    from quant_workbench.pipeline.state import RunState

log = logging.getLogger(__name__)
WORKER_ATTR = "worker"
ERROR_ATTR = "error"
INTERRUPTED_ATTR = "interrupted"
SKIPPED_ATTR = "skipped"
CONFIG_KEY_ATTR = "config_key"
RERUN_ATTR = "rerun_of"
# A sampler that keeps proposing finished configurations has run out of new ones (a small search space).
MAX_REPEATS = 50
# A live worker names its trial milliseconds after creating it; an unnamed trial this old has no worker.
UNNAMED_GRACE_S = 10.0


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a core dependency
        raise WorkbenchError("the search needs optuna, which is not installed.", "pip install optuna") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def normalize_storage(url: str) -> str:
    """`postgresql://` -> the installed driver (SQLAlchemy 2.1 defaults to psycopg 3; the extra installs psycopg2).

    A URL naming its driver (`postgresql+psycopg://`) is kept. A missing driver is a user error naming the extra.
    """
    if not url.startswith("postgresql"):
        return url
    scheme, sep, rest = url.partition("://")
    if "+" in scheme:
        return url
    import importlib.util

    for module, dialect in (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    raise WorkbenchError(
        f"search storage {url.split('@')[-1]} is PostgreSQL, but no PostgreSQL driver is installed.",
        "pip install 'quant-workbench[postgres]' (psycopg2-binary)",
    )


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _unnamed_age_s(t: Any) -> float | None:
    """Seconds since an unnamed RUNNING trial started (None when it names its worker).

    A worker names itself right after `study.ask()` creates its trial; a trial that stays unnamed was
    created by a process killed in between, and nothing else would ever end it."""
    if t.user_attrs.get(WORKER_ATTR) or t.datetime_start is None:
        return None
    # optuna stamps datetime_start with the naive local time of the worker that asked
    return (_dt.datetime.now() - t.datetime_start).total_seconds()


def fail_dead_local_trials(study: Any) -> int:
    """RUNNING trials whose worker was a process on this host that no longer exists -> FAIL (interrupted);
    so are trials left unnamed for longer than UNNAMED_GRACE_S (their worker died between ask and naming).

    Each one's parameters are enqueued, so the next trial any worker asks for re-runs the interrupted
    configuration before the sampler proposes new ones.
    """
    optuna = import_optuna()
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(t.user_attrs.get(WORKER_ATTR, ""))
        h, _, pid = worker.rpartition(":")
        age = _unnamed_age_s(t)
        if age is not None:
            if age < UNNAMED_GRACE_S:
                continue  # possibly a live worker between ask() and naming itself
            why = f"unnamed for {age:.0f} s: its worker died before naming itself"
        elif h == host and pid.isdigit() and not pid_alive(int(pid)):
            why = f"worker {worker} died"
        else:
            continue
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, why)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={RERUN_ATTR: t.number})
        n += 1
    return n


def wait_out_unnamed_trials(study: Any) -> float:
    """Seconds to wait until every unnamed RUNNING trial is past UNNAMED_GRACE_S (0 when there is none)."""
    optuna = import_optuna()
    ages = [_unnamed_age_s(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    return max((UNNAMED_GRACE_S - a for a in ages if a is not None), default=0.0)


def config_key(config: Config) -> str:
    """What makes two configurations the same trial (the dedupe key of a study)."""
    return hash_json(asdict(config))[:16]


def trial_config_key(t: Any, spec: SearchSpec, groups: Sequence[LayerGroup]) -> str | None:
    """The configuration key of a stored trial, from its parameters (None while they are incomplete)."""
    optuna = import_optuna()
    if not t.params:
        return None
    try:
        return config_key(suggest(optuna.trial.FixedTrial(dict(t.params)), spec, groups))
    except Exception:  # parameters of another search space, or a trial still being suggested
        return None


def duplicate_of(study: Any, number: int, key: str, spec: SearchSpec, groups: Sequence[LayerGroup]) -> int | None:
    """The number of another trial that already holds configuration `key`, or None.

    Finished trials (complete, or failed with an error) always hold their key; a running trial holds it
    only against later numbers, so two workers proposing one configuration together keep the lower one.
    Interrupted and skipped trials hold nothing: their configuration may (and should) run again.
    """
    optuna = import_optuna()
    st = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            continue
        holds = t.state == st.COMPLETE or (t.state == st.FAIL and ERROR_ATTR in t.user_attrs) or (t.state == st.RUNNING and t.number < number)
        if holds and trial_config_key(t, spec, groups) == key:
            return int(t.number)
    return None


def resume_seed(spec: SearchSpec, study: Any) -> int | None:
    """The sampler's seed for this start: search.seed on a fresh study, else derived from the study's state,
    so a restarted worker does not replay the draws of the first start (which are finished trials), and a
    worker joining a running study does not replay the first worker's draws. A resume from the same state
    draws the same parameters (deterministic)."""
    n = len(study.get_trials(deepcopy=False))
    if n == 0:
        return spec.seed
    return int(hash_json({"seed": spec.seed, "trials": n})[:8], 16)


def _counts(t: Any, optuna: Any) -> bool:
    """Does a trial use budget: finished (complete, or failed with an error) or still running."""
    st = optuna.trial.TrialState
    if t.state in (st.COMPLETE, st.RUNNING):
        return True
    return bool(t.state == st.FAIL and ERROR_ATTR in t.user_attrs)


def _sampler(spec: SearchSpec, optuna: Any, seed: int | None = None) -> Any:
    seed = spec.seed if seed is None else seed
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, spec.max_trials // 3 or 4)))


def directions(spec: SearchSpec) -> list[str]:
    return ["maximize" if o == "accuracy" else "minimize" for o in spec.objectives]


SMOOTHQUANT_OFF = "off"


def _alpha_choice(alpha: float | None) -> str:
    # categorical choices are strings: "off" and the alphas as written (Optuna compares choices by value)
    return SMOOTHQUANT_OFF if alpha is None else f"{alpha:g}"


def config_params(config: Config, groups: Sequence[LayerGroup], spec: SearchSpec) -> dict[str, Any]:
    """The Optuna parameters that `suggest` turns back into `config` (for enqueued configurations)."""
    params: dict[str, Any] = {}
    if len(spec.formats) > 1:
        params["format"] = config.format
    if config.format == "fp8":
        params["fp8_method"] = config.method  # FP8 has its own method list (no entropy)
    else:
        params["method"] = config.method
        if spec.smoothquant_alphas:
            params["smoothquant"] = _alpha_choice(config.alpha)
    if config.method == "percentile":
        params["percentile"] = config.percentile
    params.update({f"float:{g.name}": g.name in config.float_groups for g in groups})
    return params


def suggest(trial: Any, spec: SearchSpec, groups: Sequence[LayerGroup]) -> Config:
    fmt = trial.suggest_categorical("format", list(spec.formats)) if len(spec.formats) > 1 else spec.formats[0]
    alpha: float | None = None
    if fmt == "fp8":
        method = trial.suggest_categorical("fp8_method", spec.fp8_methods)
    else:
        method = trial.suggest_categorical("method", list(spec.methods))
        if spec.smoothquant_alphas:
            choice = trial.suggest_categorical("smoothquant", [SMOOTHQUANT_OFF, *(_alpha_choice(a) for a in spec.smoothquant_alphas)])
            alpha = None if choice == SMOOTHQUANT_OFF else float(choice)
    pct = trial.suggest_categorical("percentile", list(spec.percentiles)) if method == "percentile" else None
    floats = tuple(g.name for g in groups if trial.suggest_categorical(f"float:{g.name}", [False, True]))
    return Config(method, pct, floats, format=fmt, alpha=alpha)


def _values(rec: TrialRecord, spec: SearchSpec) -> list[float]:
    out = []
    for o in spec.objectives:
        v = rec.accuracy if o == "accuracy" else rec.relative_latency if o == "latency" else rec.size_bytes
        if v is None:
            raise WorkbenchError(f"trial has no {o} value")
        out.append(float(v))
    return out


def resolved_recipe(recipe: Recipe, config: Config, rec: TrialRecord) -> dict[str, Any]:
    """The plain recipe (no search) that reproduces this configuration as a normal run."""
    data = recipe.model_dump(mode="json")
    data.pop("search", None)
    data["data"]["selection_samples"] = None  # held out for the search's choices: a plain recipe has none
    cal = data["quantization"]["calibration"]
    cal["methods"] = [config.method]
    if config.percentile is not None:
        cal["percentile"] = config.percentile
    data["quantization"]["format"] = config.format
    data["quantization"]["compare"] = []
    smooth = recipe.quantization.smoothquant
    ffn_out = {"ffn_out": True} if smooth is not None and smooth.ffn_out else {}  # the trials' rewrite (quantize/schemes.py scheme_for)
    data["quantization"]["smoothquant"] = {"alpha": config.alpha, **ffn_out} if config.alpha is not None else None
    if config.format == "fp8":
        data["export"]["opset"] = max(int(data["export"]["opset"]), 19)
    data["quantization"]["ignore"] = list(data["quantization"]["ignore"]) + list(rec.float_modules)
    return data


class StudyRunner(Protocol):
    """What the study needs of a runner: the space, the groups, the recipe and one evaluation per configuration
    (TrialRunner in the run; a scripted stand-in in the decision tests)."""

    spec: SearchSpec
    groups: list[LayerGroup]
    recipe: Recipe

    def evaluate(self, config: Config, source: str, *, trial_number: int | None = None) -> TrialRecord: ...


def run_study(
    runner: StudyRunner,
    storage: str,
    study_name: str,
    *,
    enqueue: Sequence[Config] = (),
    say: Callable[[str], None] = print,
) -> dict[str, Any]:

    """Run this worker's share of the study; returns a summary of the whole study (all workers)."""
    optuna = import_optuna()
    spec = runner.spec
    storage = normalize_storage(storage)
    for attempt in range(5):
        try:  # workers starting together on a fresh database race to create its tables and the study
            study = optuna.create_study(
                study_name=study_name, storage=storage, directions=directions(spec), sampler=_sampler(spec, optuna), load_if_exists=True
            )
            break
        except Exception as exc:
            if attempt == 4:
                raise WorkbenchError(f"cannot open the study '{study_name}' in {storage.split('@')[-1]}: {exc}", "check search.storage / --storage") from exc
            log.debug("create_study failed (attempt %d): %s", attempt + 1, exc)
            time.sleep(1.0 + attempt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API warning
        study.set_metric_names(list(spec.objectives))
    study.sampler = _sampler(spec, optuna, resume_seed(spec, study))
    interrupted = fail_dead_local_trials(study)
    wait = wait_out_unnamed_trials(study)
    if wait > 0:  # a killed worker's trial created but never named: it would hold a budget slot forever
        time.sleep(wait)
        interrupted += fail_dead_local_trials(study)
    if interrupted:
        say(f"  {interrupted} trial(s) of a killed worker marked failed (interrupted); they do not count and run again first")
    if enqueue and not study.get_trials(deepcopy=False):
        for c in enqueue:
            study.enqueue_trial(config_params(c, runner.groups, spec), skip_if_exists=True)
    t0 = time.monotonic()
    ran = 0
    repeats = 0  # consecutive proposals of finished configurations
    while True:
        if spec.timeout_s is not None and time.monotonic() - t0 > spec.timeout_s:
            say(f"  study: timeout {spec.timeout_s:g} s reached")
            break
        if sum(_counts(t, optuna) for t in study.get_trials(deepcopy=False)) >= spec.max_trials:
            break
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, _worker_id())
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and _counts(t, optuna)]
        if len(before) >= spec.max_trials:  # another worker took the last slot first
            trial.set_user_attr(SKIPPED_ATTR, "budget reached")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            if any(t.state == optuna.trial.TrialState.RUNNING for t in before):
                # a running trial may still turn out a duplicate (or budget-skipped) and not count; two workers
                # that both stopped here would leave the budget one short, so look again once it has ended
                time.sleep(0.2)
                continue
            break
        try:
            config = suggest(trial, spec, runner.groups)
        except Exception as exc:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        key = config_key(config)
        trial.set_user_attr(CONFIG_KEY_ATTR, key)
        first = duplicate_of(study, trial.number, key, spec, runner.groups)
        if first is not None:  # a finished configuration costs no budget and is not run again
            trial.set_user_attr(SKIPPED_ATTR, f"duplicate of trial {first}")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            repeats += 1
            if repeats >= MAX_REPEATS:
                say(f"  study: the sampler proposed only finished configurations {MAX_REPEATS} times in a row; the search space looks exhausted")
                break
            continue
        repeats = 0
        rec = runner.evaluate(config, "study", trial_number=trial.number)
        first = duplicate_of(study, trial.number, key, spec, runner.groups)
        if first is not None:  # another worker proposed it at the same moment and holds the lower number
            trial.set_user_attr(SKIPPED_ATTR, f"duplicate of trial {first} (ran concurrently)")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("record", rec.to_dict())
        trial.set_user_attr("resolved_recipe", resolved_recipe(runner.recipe, config, rec))
        trial.set_user_attr("artifacts", rec.artifacts)
        ran += 1
        if rec.status != "ok":
            trial.set_user_attr(ERROR_ATTR, rec.error or "failed")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        try:
            study.tell(trial, _values(rec, spec))
        except WorkbenchError as exc:
            trial.set_user_attr(ERROR_ATTR, str(exc))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        say(f"  trial {trial.number}: {config.label()} acc {rec.accuracy:.4f} p50 {rec.p50_ms or float('nan'):.2f} ms ({rec.relative_latency or float('nan'):.3f}x float)")
    return study_summary(study, ran)


def study_summary(study: Any, ran_here: int = 0) -> dict[str, Any]:
    optuna = import_optuna()
    st = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        rec = t.user_attrs.get("record")
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "error": t.user_attrs.get(ERROR_ATTR),
            "interrupted": t.user_attrs.get(INTERRUPTED_ATTR),
            "skipped": t.user_attrs.get(SKIPPED_ATTR),
            "worker": t.user_attrs.get(WORKER_ATTR),
            "record": rec,
        })
    return {
        "study_name": study.study_name,
        "complete": sum(t.state == st.COMPLETE for t in trials),
        "failed": sum(t.state == st.FAIL and ERROR_ATTR in t.user_attrs for t in trials),
        "interrupted": sum(INTERRUPTED_ATTR in t.user_attrs for t in trials),
        "skipped": sum(SKIPPED_ATTR in t.user_attrs for t in trials),
        "ran_by_this_worker": ran_here,
        "trials": rows,
    }


# ---------------------------------------------------------------------------------------------
# Pareto front and selection


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of (accuracy: max, latency: min)."""
    front = []
    for i, (a, lat) in enumerate(points):
        dominated = any((a2 >= a and l2 <= lat) and (a2 > a or l2 < lat) for j, (a2, l2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][1])


def _dedupe(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    seen: dict[str, TrialRecord] = {}
    for r in records:
        if r.status == "ok" and r.accuracy is not None and r.key and r.key not in seen:
            seen[r.key] = r
    return list(seen.values())


def clearly_slower(r: TrialRecord, fastest: TrialRecord, speed_margin: float) -> bool:
    """Is `r` slower than `fastest` beyond the speed margin with confidence? Each was timed against float in
    its own loop, so their ratio's log-scale half-width combines the two speed-up intervals' (sqrt of the
    sum of squares); records without an interval compare by their point estimates."""
    if r.relative_latency is None or fastest.relative_latency is None:
        return r.relative_latency is None and fastest.relative_latency is not None
    ratio = r.relative_latency / fastest.relative_latency
    half = math.hypot(r.log_half_width(), fastest.log_half_width())
    return ratio * math.exp(-half) > 1.0 + speed_margin


def select(records: Sequence[TrialRecord], threshold: float, speed_margin: float = DEFAULT_SPEED_MARGIN) -> tuple[TrialRecord | None, bool]:
    """The search's own pick, with the run's rule on the split it scored (the selection split): among the
    configurations meeting the criterion there, the fastest and every one not slower than it beyond the speed
    margin (`clearly_slower`) count as equally fast, and the most accurate of those wins (then the faster).
    If none meets it, the most accurate one found (meets=False). The run's final rule re-checks the pick on
    the evaluation split."""
    ok = _dedupe(records)
    meeting = [r for r in ok if r.accuracy is not None and r.accuracy >= threshold - 1e-12]
    if meeting:
        timed = [r for r in meeting if r.relative_latency is not None]
        if not timed:
            return max(meeting, key=lambda r: (r.accuracy or 0.0)), True
        fastest = min(timed, key=lambda r: (r.relative_latency or 0.0, -(r.accuracy or 0.0)))
        group = [r for r in timed if not clearly_slower(r, fastest, speed_margin)]
        return max(group, key=lambda r: (r.accuracy or 0.0, -(r.relative_latency or 0.0))), True
    if not ok:
        return None, False
    return max(ok, key=lambda r: (r.accuracy or 0.0, -(r.relative_latency or 0.0))), False


def copy_best(rec: TrialRecord, run_dir: Path) -> dict[str, str]:
    best = run_dir / "best"
    tmp = run_dir / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out = {}
    names = {"onnx": "model.qdq.onnx", "scales": "scales.json", "plan": "quant_plan.json"}
    for kind, rel in rec.artifacts.items():
        src = run_dir / rel
        if src.exists():
            shutil.copyfile(src, tmp / names.get(kind, src.name))
            data = src.with_name(src.name + ".data")
            if data.exists():
                shutil.copyfile(data, tmp / (names.get(kind, src.name) + ".data"))
            out[kind] = f"best/{names.get(kind, src.name)}"
    write_json(tmp / "config.json", rec.to_dict())
    shutil.rmtree(best, ignore_errors=True)
    os.replace(tmp, best)
    return out


# ---------------------------------------------------------------------------------------------
# plots and report section


def plot_sensitivity(rows: Sequence[SensitivityRow], float_acc: float, all_int8_acc: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.group.name for r in rows]
    drop = [(float_acc - (r.only_quantized.accuracy or 0.0)) * 100 for r in rows]
    gain = [((r.only_float.accuracy or 0.0) - (all_int8_acc or 0.0)) * 100 for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 3), 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, drop, 0.4, label="accuracy drop vs float, only this group INT8")
    ax.bar(x + 0.2, gain, 0.4, label="accuracy gain vs all-INT8, only this group float")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("accuracy points")
    ax.set_title("Sensitivity per layer group (most sensitive first)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def plot_pareto(records: Sequence[TrialRecord], selected: TrialRecord | None, float_acc: float, float_ms: float | None, threshold: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in _dedupe(records) if r.relative_latency is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if ok:
        pts = [(r.accuracy or 0.0, r.relative_latency or 0.0) for r in ok]
        front = pareto_front(pts)
        by_scheme: dict[str, list[tuple[float, float]]] = {}
        for r, p in zip(ok, pts, strict=True):
            by_scheme.setdefault(scheme_label(r.config.to_dict()), []).append(p)
        markers = {"INT8": "o", "FP8 E4M3": "^"}
        for i, (scheme, scheme_pts) in enumerate(sorted(by_scheme.items())):
            label = "evaluated configs" if len(by_scheme) == 1 else scheme
            ax.scatter([p[1] for p in scheme_pts], [p[0] * 100 for p in scheme_pts], s=18, color=f"C{[0, 2, 4, 5, 6, 8, 9][i % 7]}", alpha=0.6, marker=markers.get(scheme, "s"), label=label)
        ax.plot([pts[i][1] for i in front], [pts[i][0] * 100 for i in front], "-", color="C1", label="Pareto front")
    ax.scatter([1.0], [float_acc * 100], marker="s", color="k", label="float")
    ax.axhline(threshold * 100, color="C3", ls="--", lw=1, label="criterion")
    if selected is not None and selected.relative_latency is not None:
        ax.scatter([selected.relative_latency], [(selected.accuracy or 0) * 100], s=250, facecolors="none", edgecolors="C3", lw=2, label="selected")
    ax.set_xlabel("p50 latency relative to float (timed interleaved; lower is faster)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs latency: every evaluated configuration")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the run's search stage (run.STAGES runs it after the PTQ variants when recipe.search is set)


def search_stage(state: RunState, smoothquant: SmoothQuantInputs) -> None:
    """The run's search stage: sensitivity, fallback and the study from the run's cached statistics.

    Adds two variants to the state (`int8-max`, the all-INT8 max baseline, unless a PTQ scheme already
    built it, and `<format>-search`, the configuration the search selected), each with its engine
    graph; the run's own evaluate / benchmark / select / report stages score them with every other
    variant. The summary goes to `state.search` (search.json and the report's Search section).
    """
    recipe, run_dir, say = state.recipe, state.run_dir, state.say
    loaded, splits, plan = state.need_loaded(), state.need_splits(), state.need_plan()
    spec = recipe.search
    assert spec is not None
    with state.stage("search: float baseline"):
        runner = TrialRunner(
            recipe, loaded, splits, plan, state.calibrators, state.example, state.need_float_path(), state.base_key, run_dir,
            smoothquant=smoothquant, progress=state.progress, say=say, engine_graphs=state.graphs,
        )
        if not runner.groups:
            raise WorkbenchError("the search found no layer groups among the quantized ops.", "check quantization.targets (--dry-run)")
        say(f"  float accuracy {runner.float_accuracy:.4f}; criterion {spec.criterion.describe()} -> >= {runner.threshold:.4f}; {len(runner.groups)} groups")
    method = spec.method_for_analysis
    pct = (recipe.quantization.calibration.percentile if recipe.quantization.calibration.percentile in spec.percentiles else spec.percentiles[0]) if method == "percentile" else None
    try:
        with state.stage("search: baselines"):
            all_int8 = runner.evaluate(Config(method, pct), "baseline")
            max_full = all_int8 if method == "max" else runner.evaluate(Config("max"), "baseline")
        rows: list[SensitivityRow] = []
        fallback: FallbackResult | None = None
        if spec.sensitivity:
            with state.stage("search: sensitivity"):
                rows = sensitivity(runner, method, pct, all_int8)
                say("  ranking: " + ", ".join(f"{r.group.name} ({r.score:+.4f})" for r in rows))
        if spec.fallback and rows:
            with state.stage("search: fallback"):
                fallback = auto_fallback(runner, [r.group.name for r in rows], method, pct, all_int8)
                say(f"  fallback: float {fallback.float_groups or 'none'} -> acc {fallback.final.accuracy} meets={fallback.meets}")
        study: dict[str, Any] | None = None
        storage = spec.storage or default_storage(run_dir)
        if spec.max_trials > 0:
            with state.stage("search: study"):
                enqueue = [all_int8.config] + ([fallback.final.config] if fallback else []) + ([max_full.config] if max_full is not all_int8 else [])
                # every other format of the space starts from its all-quantized point, so the front covers it
                base = all_int8.config
                if "fp8" in spec.formats:
                    enqueue.append(replace(base, format="fp8", method=base.method if base.method in spec.fp8_methods else spec.fp8_methods[0]))
                enqueue += [replace(base, alpha=a) for a in spec.smoothquant_alphas]
                name = spec.study_name or f"{recipe.name}-{run_dir.name}"
                study = run_study(runner, storage, name, enqueue=enqueue, say=say)
        # every configuration of the whole study (other workers too) joins the selection
        records = list(runner.records)
        if study:
            for t in study["trials"]:
                rec = t.get("record")
                if rec and rec.get("status") == "ok" and not any(r.key == rec["key"] for r in records):
                    records.append(_record_from_dict(rec))
        selected, meets = select(records, runner.threshold, recipe.selection.speed_margin)
        if selected is not None and not (run_dir / selected.artifacts.get("onnx", "-")).exists():
            # found by another worker (another run folder or machine): rebuild its artifacts here from the same statistics
            local = runner.evaluate(selected.config, "selected (from another worker)")
            if local.status == "ok":
                selected = local
        # the same gate as every PTQ variant before the search's configurations join the run: the full Q/DQ check
        gates: dict[str, dict[str, Any] | str] = {}
        for rec in {id(r): r for r in (max_full, selected) if r is not None and r.status == "ok"}.values():
            try:
                gates[rec.key] = runner.check(rec.config, rec)
            except Exception as exc:  # a failed check removes the candidate, with why
                gates[rec.key] = f"failed its fidelity gate: {type(exc).__name__}: {exc}"
                say(f"  {rec.config.label()} {gates[rec.key]}")
    finally:
        # trials leave the model in their own layer selection; later stages (QAT) start from the recipe's plan
        apply_flags(loaded.model.hf, plan)
    best_artifacts = copy_best(selected, run_dir) if selected else {}

    # the selection is named by its format: int8-search, or fp8-search when the study chose FP8
    search_name = f"{selected.config.format}-search" if selected is not None else "int8-search"
    for name, rec in (("int8-max", max_full), (search_name, selected)):
        if rec is None or rec.status != "ok" or state.variant(name) is not None:
            continue  # a PTQ scheme's int8-max is the same configuration (the recipe's plan, max scales)
        v = VariantResult(name=name, precision="fp8" if rec.config.format == "fp8" else "int8", calibration_method=rec.config.method, artifacts=dict(rec.artifacts), size_bytes=rec.size_bytes)
        if name == search_name:
            v.artifacts = {**v.artifacts, **{f"best_{k}": p for k, p in best_artifacts.items()}}
        gate = gates.get(rec.key)
        if isinstance(gate, str):
            v.status, v.error = "failed", gate
            state.add_variant(v)
            continue
        v.fidelity = dict(gate or {})
        state.add_variant(v, run_dir / rec.artifacts.get("engine_onnx", rec.artifacts["onnx"]))
    state.search_choice = search_name if state.variant(search_name) is not None else None
    state.search_threshold = runner.threshold
    if selected is not None:
        state.quant_plan_rows = runner.plan_for(selected.config).to_rows()
    float_ms = next((r.float_p50_ms for r in runner.records if r.float_p50_ms is not None), None)
    ok = [r for r in _dedupe(records) if r.relative_latency is not None]
    front = [ok[i] for i in pareto_front([(r.accuracy or 0.0, r.relative_latency or 0.0) for r in ok])]
    trial_s = [r.seconds.get("total", 0.0) for r in runner.records if not r.reused]
    cal_info = state.calibration
    recal = runner.recalibration
    state.search = {
        "criterion": spec.criterion.describe(),
        "split": runner.split_name,
        "split_size": len(runner.split),
        "threshold": runner.threshold,
        "float_accuracy": runner.float_accuracy,
        "float_p50_ms": float_ms,
        "latency_shape": {**spec.latency.model_dump(), "seq_length": spec.latency.seq_length or recipe.model.max_seq_length},
        "engine": "TensorRT" if recipe.engine.runtime == "tensorrt" else f"ONNX Runtime {recipe.engine.provider}",
        "groups": [g.to_dict() for g in runner.groups],
        "calibration_passes": (0 if cal_info.get("cache_hit") else 1) + (recal.passes if recal else 0),
        "calibration_source": ("the cache" if cal_info.get("cache_hit") else "one pass before the search")
        + (f", plus {len(recal)} SmoothQuant alpha(s) ({recal.passes} collected now, the rest cached)" if recal else ""),
        "space": {"formats": list(spec.formats), "smoothquant_alphas": list(spec.smoothquant_alphas), "methods": list(spec.methods), "percentiles": list(spec.percentiles)},
        "configs_evaluated": len(runner.records),
        "exports": runner.exports,
        "median_trial_s": float(np.median(trial_s)) if trial_s else 0.0,
        "trial_seconds": trial_s,
        "selected": selected.to_dict() if selected else None,
        "selected_variant": state.search_choice,
        "selected_meets": meets,
        "miss": None if meets or selected is None or selected.accuracy is None else runner.threshold - selected.accuracy,
        "best_artifacts": best_artifacts,
        "comparison": [
            {"name": "float", "accuracy": runner.float_accuracy, "p50_ms": float_ms, "speedup": 1.0},
            {"name": f"int8-max (all INT8) {max_full.config.label()}", "accuracy": max_full.accuracy, "p50_ms": max_full.p50_ms, "speedup": max_full.speedup},
            *([{"name": f"selected {selected.config.label()}", "accuracy": selected.accuracy, "p50_ms": selected.p50_ms, "speedup": selected.speedup}] if selected else []),
        ],
        "sensitivity": [r.to_dict(runner.float_accuracy, all_int8.accuracy) for r in rows],
        "fallback": fallback.to_dict() if fallback else None,
        "study": study,
        "storage_kind": storage.split(":", 1)[0],
        "pareto": [r.to_dict() for r in front],
        "records": [r.to_dict() for r in runner.records],
    }
    write_json(run_dir / "search.json", state.search)  # the report stage rewrites it with the final check
    if rows:
        plot_sensitivity(rows, runner.float_accuracy, all_int8.accuracy, run_dir / "plots" / "sensitivity.png")
    plot_pareto(records, selected, runner.float_accuracy, float_ms, runner.threshold, run_dir / "plots" / "pareto.png")


def criterion_at_lower_bound(selected: VariantResult | None, float_accuracy: float, threshold: float) -> dict[str, Any]:
    """Whether the criterion, checked on the point estimate, also holds at the paired Δ interval's lower bound."""
    cmp = selected.intervals.get("vs_float") if selected is not None else None
    if not cmp:
        return {"selected_meets_at_lower_bound": None}
    return {
        "selected_meets_at_lower_bound": bool(float_accuracy + cmp["delta_low"] >= threshold - 1e-12),
        "selected_delta_low": cmp["delta_low"],
        "interval_confidence": 100.0 * (1.0 - cmp["level"]),
    }


def _record_from_dict(d: dict[str, Any]) -> TrialRecord:
    c = d["config"]
    rec = TrialRecord(source=d["source"], config=Config.from_dict(c))
    for k in ("status", "error", "key", "accuracy", "metrics", "p50_ms", "float_p50_ms", "speedup", "size_bytes", "quantized_ops", "float_modules", "artifacts", "seconds", "meets", "trial_number"):
        setattr(rec, k, d.get(k))
    for k in ("speedup_low", "speedup_high", "aa_ratio"):
        setattr(rec, k, d.get(k))
    rec.split = d.get("split", "evaluation")
    return rec
