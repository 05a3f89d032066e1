"""Recipe validation: typed load, messages that name the field path and say how to fix it, `--set` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from quant_workbench.config.recipe import (
    DEFAULT_TARGETS,
    Recipe,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    resolve_location,
)
from quant_workbench.core.errors import RecipeError


@pytest.fixture
def base(make_recipe: Any) -> dict[str, Any]:
    return make_recipe()


def _error(data: dict[str, Any], overrides: list[str] | None = None) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, overrides)
    return info.value


# ---------------------------------------------------------------------------------------------
# valid recipes


def test_valid_dict_loads_typed_and_frozen(base: dict[str, Any]) -> None:
    r = recipe_from_dict(base)
    assert isinstance(r, Recipe)
    assert r.model.max_seq_length == 32
    assert r.data.calibration_samples == 32
    assert r.quantization.calibration.methods == ["max"]
    assert r.benchmark.batch_sizes == [1, 2]
    # defaults fill the sections the recipe leaves out
    assert r.quantization.targets == DEFAULT_TARGETS
    assert r.quantization.quantize_attention_matmuls is False
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        r.seed = 3  # type: ignore[misc]


def test_load_recipe_from_yaml_round_trips(base: dict[str, Any], write_recipe: Any) -> None:
    path = write_recipe(base)
    r = load_recipe(path)
    assert r == recipe_from_dict(base)
    # the resolved YAML re-validates to the same recipe
    assert recipe_from_dict(yaml.safe_load(r.to_yaml())) == r


def test_bundled_default_recipe_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    r = load_recipe(root / "recipes" / "bert_int8.yaml")
    assert r.name == "bert_int8"
    assert r.model.source.startswith("package:")
    assert set(r.quantization.calibration.methods) == {"max"}  # each method costs a row per engine and precision
    assert r.engine.all_runtimes == ["onnxruntime", "openvino"]  # issue 17: which engine and which variant
    assert r.quantization.smoothquant is not None and r.quantization.smoothquant.ffn_out


# ---------------------------------------------------------------------------------------------
# unknown keys


def test_unknown_top_level_key_suggests_close_match(base: dict[str, Any]) -> None:
    base["quantisation"] = base.pop("quantization")
    err = _error(base)
    text = str(err)
    assert "unknown key 'quantisation'" in text
    assert "allowed here:" in text
    for allowed in ("model", "data", "quantization", "export", "engine", "benchmark"):
        assert allowed in text
    assert "did you mean 'quantization'?" in text


def test_unknown_nested_key_names_full_path_and_allowed_keys(base: dict[str, Any]) -> None:
    base["quantization"]["calibration"]["method"] = ["max"]
    text = str(_error(base))
    assert "quantization.calibration.method'" in text
    allowed = text.split("allowed here:", 1)[1]
    for key in ("methods", "percentile", "batch_size", "num_bins", "cache_dir"):
        assert key in allowed
    assert "did you mean 'methods'?" in text


def test_unknown_key_inside_optional_section(base: dict[str, Any]) -> None:
    base["data"]["hub"] = {"name": "x", "splitt": "train"}
    text = str(_error(base))
    assert "data.hub.splitt" in text
    assert "did you mean 'split'?" in text


def test_unknown_key_without_close_match_says_remove(base: dict[str, Any]) -> None:
    base["engine"]["zzzzzz"] = 1
    err = _error(base)
    assert "engine.zzzzzz" in str(err)
    assert err.hint is not None and "remove the key" in err.hint


# ---------------------------------------------------------------------------------------------
# types, enums, combinations


def test_wrong_type_names_field_and_value(base: dict[str, Any]) -> None:
    base["benchmark"]["iterations"] = "many"
    text = str(_error(base))
    assert "'benchmark.iterations'" in text
    assert "'many'" in text
    assert "integer" in text


def test_wrong_type_for_a_section(base: dict[str, Any]) -> None:
    base["model"] = "bert"
    text = str(_error(base))
    assert "'model'" in text


def test_missing_required_field(base: dict[str, Any]) -> None:
    del base["model"]["source"]
    err = _error(base)
    assert "'model.source' is required but missing" in str(err)
    assert err.hint is not None and "source" in err.hint


def test_bad_calibration_method_lists_allowed(base: dict[str, Any]) -> None:
    base["quantization"]["calibration"]["methods"] = ["kl"]
    text = str(_error(base))
    assert "quantization.calibration.methods" in text
    assert "'kl'" in text
    for allowed in ("max", "percentile", "entropy", "mse"):
        assert f"'{allowed}'" in text


def test_repeated_methods_rejected(base: dict[str, Any]) -> None:
    base["quantization"]["calibration"]["methods"] = ["max", "max"]
    assert "must not repeat" in str(_error(base))


@pytest.mark.parametrize(
    ("section", "key", "value", "expect"),
    [
        ("model", "task", "ner", "'embedding' or 'sequence-classification'"),
        ("model", "pooling", "max", "'mean' or 'cls'"),
        ("engine", "provider", "tpu", "'cpu'"),
        ("quantization", "percentile", 3, "quantization.percentile"),  # unknown key: lives under calibration
    ],
)
def test_other_enums_and_misplaced_keys(base: dict[str, Any], section: str, key: str, value: Any, expect: str) -> None:
    base[section][key] = value
    assert expect in str(_error(base))


def test_benchmark_seq_length_longer_than_model_max(base: dict[str, Any]) -> None:
    base["benchmark"]["seq_lengths"] = [16, 64]
    text = str(_error(base))
    assert "benchmark.seq_lengths [64]" in text
    assert "model.max_seq_length=32" in text


def test_embedding_needs_probe_samples(base: dict[str, Any]) -> None:
    base["data"]["probe_samples"] = 5
    assert "data.probe_samples >= 10" in str(_error(base))


def test_csv_without_files(base: dict[str, Any]) -> None:
    base["data"]["files"] = []
    assert "needs 'files: [path, ...]'" in str(_error(base))


def test_bad_regex_in_targets(base: dict[str, Any]) -> None:
    base["quantization"]["targets"] = ["re:encoder\\.layer\\.(\\d+"]
    text = str(_error(base))
    assert "quantization.targets" in text
    assert "is not a valid regular expression" in text


def test_bad_regex_in_ignore(base: dict[str, Any]) -> None:
    base["quantization"]["ignore"] = ["re:[unclosed"]
    text = str(_error(base))
    assert "quantization.ignore" in text
    assert "'re:[unclosed'" in text


def test_several_errors_reported_together(base: dict[str, Any]) -> None:
    base["benchmark"]["iterations"] = 0
    base["export"]["opsett"] = 18
    text = str(_error(base))
    assert "benchmark.iterations" in text
    assert "export.opsett" in text


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_scalars_lists_and_new_sections(base: dict[str, Any]) -> None:
    r = recipe_from_dict(
        base,
        [
            "benchmark.batch_sizes=[1, 8]",
            "quantization.calibration.methods=[entropy,mse]",
            "benchmark.iterations=7",
            "quantization.quantize_residual_adds=true",
            "quantization.calibration.percentile=99.9",
            "description=hello world",
            "export.min_cosine=0.95",
        ],
    )
    assert r.benchmark.batch_sizes == [1, 8]
    assert r.quantization.calibration.methods == ["entropy", "mse"]
    assert r.benchmark.iterations == 7
    assert r.quantization.quantize_residual_adds is True
    assert r.quantization.calibration.percentile == pytest.approx(99.9)
    assert r.description == "hello world"
    assert r.export.min_cosine == pytest.approx(0.95)


def test_override_value_may_contain_equals_sign(base: dict[str, Any]) -> None:
    r = recipe_from_dict(base, ["description=a=b"])
    assert r.description == "a=b"


def test_overrides_do_not_mutate_input(base: dict[str, Any]) -> None:
    before = copy.deepcopy(base)
    apply_overrides(base, ["benchmark.iterations=9", "quantization.ignore=[pooler]"])
    assert base == before


def test_override_creates_missing_section() -> None:
    out = apply_overrides({"name": "x"}, ["export.opset=17"])
    assert out == {"name": "x", "export": {"opset": 17}}


def test_overrides_through_load_recipe(base: dict[str, Any], write_recipe: Any) -> None:
    path = write_recipe(base)
    r = load_recipe(path, ["quantization.calibration.methods=[max, percentile]", "seed=3"])
    assert r.quantization.calibration.methods == ["max", "percentile"]
    assert r.seed == 3


def test_override_then_validation_error_names_the_field(base: dict[str, Any]) -> None:
    text = str(_error(base, ["quantization.calibration.methods=[kl]"]))
    assert "quantization.calibration.methods" in text and "'kl'" in text


@pytest.mark.parametrize("item", ["benchmark.iterations", "benchmark.iterations 5", ""])
def test_malformed_set_without_equals(base: dict[str, Any], item: str) -> None:
    err = _error(base, [item])
    assert "is not of the form key.path=value" in str(err)
    assert err.hint is not None and "--set" in err.hint


def test_set_with_empty_key_path(base: dict[str, Any]) -> None:
    assert "empty key path" in str(_error(base, ["=5"]))


def test_set_below_a_scalar_is_an_error(base: dict[str, Any]) -> None:
    text = str(_error(base, ["model.source.path=/tmp"]))
    assert "'source' is not a section" in text


# ---------------------------------------------------------------------------------------------
# files and package: locations


def test_missing_recipe_file(tmp_path: Path) -> None:
    err = pytest.raises(RecipeError, load_recipe, tmp_path / "nope.yaml").value
    assert "does not exist" in str(err)


def test_recipe_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\nmodel: {", encoding="utf-8")
    assert "is not valid YAML" in str(pytest.raises(RecipeError, load_recipe, path).value)


def test_recipe_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert "must be a mapping" in str(pytest.raises(RecipeError, load_recipe, path).value)


def test_package_location_of_uninstalled_package() -> None:
    with pytest.raises(RecipeError) as info:
        resolve_location("package:qwb_no_such_package_xyz/model")
    assert "'qwb_no_such_package_xyz'" in str(info.value)
    assert "not installed" in str(info.value)
    assert info.value.hint == "pip install qwb-no-such-package-xyz"


def test_package_location_resolves_inside_installed_package() -> None:
    import quant_workbench

    got = Path(resolve_location("package:quant_workbench/quantize"))
    assert got == Path(quant_workbench.__file__).parent / "quantize"
    assert resolve_location("/plain/path") == "/plain/path"


def test_model_location_property_raises_for_missing_package(base: dict[str, Any]) -> None:
    base["model"]["source"] = "package:qwb_no_such_package_xyz/model"
    r = recipe_from_dict(base)  # resolution happens when the location is used, not at validation
    with pytest.raises(RecipeError, match="not installed"):
        _ = r.model.location


# ---------------------------------------------------------------------------------------------
# margins and the selection split (issue 16)


def test_a_search_holds_out_a_selection_split_by_default(base: dict[str, Any]) -> None:
    from quant_workbench.config.recipe import DEFAULT_SEARCH_SELECTION_SAMPLES

    assert recipe_from_dict(base).data.selection_samples is None
    big = {**base, "data": {**base["data"], "eval_samples": 5000}}
    assert recipe_from_dict({**big, "search": {}}).data.selection_samples == DEFAULT_SEARCH_SELECTION_SAMPLES
    small = {**base, "data": {**base["data"], "eval_samples": 60}}
    assert recipe_from_dict({**small, "search": {}}).data.selection_samples == 60  # as large as the evaluation split
    explicit = recipe_from_dict({**base, "search": {}, "data": {**base["data"], "selection_samples": 0}})
    assert explicit.data.selection_samples == 0  # the user may choose on the evaluation split; the report says so


def test_a_selection_split_without_a_search_is_rejected(base: dict[str, Any]) -> None:
    with pytest.raises(RecipeError, match=r"data.selection_samples=500 .* no search section"):
        recipe_from_dict({**base, "data": {**base["data"], "selection_samples": 500}})


def test_a_search_criterion_and_an_accuracy_margin_are_one_setting(base: dict[str, Any]) -> None:
    with pytest.raises(RecipeError, match=r"search.criterion: \{absolute: 0.004\}"):
        recipe_from_dict({**base, "search": {}, "selection": {"accuracy_margin": 0.004}})


def test_new_keys_at_their_defaults_keep_the_run_id(base: dict[str, Any]) -> None:
    from quant_workbench.pipeline.run import recipe_hash

    plain = recipe_hash(recipe_from_dict(base))
    same = {**base, "selection": {"speed_margin": 0.03, "looks": 5, "accuracy_margin": None}, "data": {**base["data"], "selection_samples": 0}}
    assert recipe_hash(recipe_from_dict(same)) == plain
    for changed in ({"selection": {"speed_margin": 0.05}}, {"selection": {"looks": 1}}, {"selection": {"accuracy_margin": 0.01}}):
        assert recipe_hash(recipe_from_dict({**base, **changed})) != plain
