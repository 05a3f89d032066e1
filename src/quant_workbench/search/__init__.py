"""Search for the best accuracy / latency trade-off (issue 4).

groups.py       layer groups (per encoder layer, per op kind) and fallback overrides of a QuantPlan
sensitivity.py  TrialRunner (one config -> Q/DQ ONNX -> ORT accuracy + latency), sensitivity, fallback
study.py        Optuna multi-objective study (SQLite / PostgreSQL), Pareto front, selection, report

The `search` section of the recipe is config/search.py (pure pydantic); this package runs it.
"""
