"""Triton model repositories for a finished run: model configs, tokenizer, ensembles, validation.

Layout written under `<run>/triton/` (or `--out`):

    tokenizer/                      Python backend: TYPE_STRING text -> the model's int64 inputs
      config.pbtxt  1/model.py  1/tokenizer/...
    <variant>-cpu/                  Python backend running ONNX Runtime on CPU  (target python-onnxruntime)
      config.pbtxt  1/model.py  1/model.onnx
    <variant>-ort/                  platform onnxruntime_onnx (optionally TensorRT accelerator, INT8)
      config.pbtxt  1/model.onnx
    <variant>-trt/                  platform tensorrt_plan  (1/model.plan, built on the serving GPU)
      config.pbtxt  1/model.plan
    <variant>-ov-cpu/               Python backend running OpenVINO on CPU  (target python-openvino)
      config.pbtxt  1/model.py  1/model.onnx
    <variant>-ov/                   backend openvino (Triton's OpenVINO backend; 1/model.onnx)
      config.pbtxt  1/model.onnx
    <variant>-<target>-text/        ensemble: tokenizer -> model; text in, embeddings/logits out
      config.pbtxt  1/
    repository.json                 manifest: models, ensembles, which run on a CPU-only server

Every config.pbtxt is parsed with Triton's own ModelConfig protobuf (shipped in tritonclient) and its
inputs/outputs are checked against the ONNX graph (or the TensorRT engine) before the repository is
moved into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quant_workbench.config.recipe import DeploySpec, EngineSpec, Recipe
from quant_workbench.core.artifacts import make_shareable, write_json, write_text
from quant_workbench.core.errors import OptionalDependencyError, WorkbenchError
from quant_workbench.core.signatures import ONNX_TO_TRITON, TensorSig
from quant_workbench.deploy.targets import TARGETS, DeployBackend, TargetInputs, TargetModel
from quant_workbench.runtime.onnxruntime import CPU_DISABLED_OPTIMIZERS

MANIFEST = "repository.json"
TOKENIZER_MODEL = "tokenizer"
TEXT_INPUTS = ("text", "text_pair")
PYTHON_MODELS = Path(__file__).with_name("python_models")



class DeployError(WorkbenchError):
    """The model repository cannot be generated or fails validation."""


# ---------------------------------------------------------------------------------------------
# tensor signatures


def onnx_signature(path: Path) -> tuple[list[TensorSig], list[TensorSig]]:
    """Inputs and outputs of an ONNX graph in Triton terms (batch axis 0 removed)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise DeployError(f"cannot read ONNX model {path}: {exc}", "re-run the recipe to re-export it") from exc
    initializers = {i.name for i in graph.initializer}

    def sig(value: Any, role: str) -> TensorSig:
        tt = value.type.tensor_type
        if tt.elem_type not in ONNX_TO_TRITON:
            raise DeployError(f"{role} '{value.name}' of {path.name} has ONNX element type {tt.elem_type}, which Triton cannot serve.")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        if not dims or dims[0] != -1:
            raise DeployError(
                f"{role} '{value.name}' of {path.name} has shape {dims} without a dynamic batch axis 0; "
                "Triton's dynamic batching needs one.",
                "export with a dynamic batch axis (the workbench's exporter does)",
            )
        return TensorSig(value.name, ONNX_TO_TRITON[tt.elem_type], tuple(dims[1:]))

    inputs = [sig(v, "input") for v in graph.input if v.name not in initializers]
    outputs = [sig(v, "output") for v in graph.output]
    return inputs, outputs


# ---------------------------------------------------------------------------------------------
# protobuf text format


MAP_FIELDS = ("input_map", "output_map")


class Enum(str):
    """A value written bare (an enum constant), not quoted."""


class StrMap(dict[str, str]):
    """A protobuf map<string, string> field (e.g. an execution accelerator's parameters)."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """Render a nested mapping as protobuf text format, in insertion order.

    Mapping values become `key { ... }`; lists of mappings `key [ {...}, {...} ]`; lists of scalars
    `key: [a, b]`. Map fields get one `key { key: ... value: ... }` entry per line: `parameters` of a
    model (map<string, ModelParameter>: the value is wrapped in `string_value`), the ensemble's
    `input_map`/`output_map` and any StrMap (map<string, string>).
    """
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, StrMap) or (key in MAP_FIELDS and isinstance(value, Mapping)):
            for k, v in value.items():
                lines.append(f"{pad}{key} {{ key: {json.dumps(k)} value: {json.dumps(v)} }}")
        elif key == "parameters" and isinstance(value, Mapping):
            for k, v in value.items():
                lines.append(f'{pad}parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(str(v))} }} }}')
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.append(to_pbtxt(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key} [")
            blocks = []
            for item in value:
                blocks.append(f"{pad}  {{\n{to_pbtxt(item, indent + 2)}\n{pad}  }}")
            lines.append(",\n".join(blocks))
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _io(sigs: Sequence[TensorSig], ragged: bool = False) -> list[dict[str, Any]]:
    out = []
    for s in sigs:
        entry: dict[str, Any] = {"name": s.name, "data_type": Enum(s.data_type), "dims": list(s.dims)}
        if ragged:
            entry["allow_ragged_batch"] = True
        out.append(entry)
    return out


def _batching(spec: DeploySpec) -> dict[str, Any]:
    return {
        "preferred_batch_size": list(spec.preferred_batch_sizes) or None,
        "max_queue_delay_microseconds": spec.max_queue_delay_microseconds,
    }


# ---------------------------------------------------------------------------------------------
# config builders (return the config.pbtxt text)


def _python_model_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, parameters: dict[str, str]) -> str:
    """A model run on CPU by one of python_models/ (`parameters`: what that model.py reads)."""
    cfg: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        # ragged: requests of different sequence lengths share one batch; model.py pads them
        "input": _io(inputs, ragged=True),
        "output": _io(outputs),
        "dynamic_batching": _batching(spec),
        "instance_group": [{"count": spec.instance_count, "kind": Enum("KIND_CPU")}],
        "parameters": parameters,
    }
    return to_pbtxt(cfg) + "\n"


def python_onnxruntime_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, engine: EngineSpec) -> str:
    return _python_model_config(name, inputs, outputs, spec, {
        "onnx_file": "model.onnx",
        "intra_op_threads": str(spec.threads),
        "graph_optimization": engine.graph_optimization,
        # the optimizers the workbench's own CPU engine disables, so Triton's answers equal the run's
        "disabled_optimizers": ",".join(CPU_DISABLED_OPTIMIZERS),
    })


def onnxruntime_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, precision: str) -> str:
    gpu = spec.instance_kind == "gpu"
    cfg: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": spec.max_batch_size,
        "input": _io(inputs),
        "output": _io(outputs),
        "dynamic_batching": _batching(spec),
        "instance_group": [{"count": spec.instance_count, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}],
    }
    if gpu and spec.tensorrt_accelerator:
        trt_params = {
            "precision_mode": "INT8" if precision == "int8" else ("FP16" if spec.tensorrt.fp16 else "FP32"),
            "max_workspace_size_bytes": str(spec.tensorrt.workspace_mib << 20),
        }
        cfg["optimization"] = {
            "execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": StrMap(trt_params)}]}
        }
    return to_pbtxt(cfg) + "\n"


def tensorrt_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec) -> str:
    cfg: dict[str, Any] = {
        "name": name,
        "platform": "tensorrt_plan",
        "max_batch_size": spec.max_batch_size,
        "input": _io(inputs),
        "output": _io(outputs),
        "dynamic_batching": _batching(spec),
        "instance_group": [{"count": spec.instance_count, "kind": Enum("KIND_GPU")}],
    }
    return to_pbtxt(cfg) + "\n"


def tokenizer_config(model_inputs: Sequence[TensorSig], spec: DeploySpec, max_length: int, pair: bool) -> str:
    text_inputs = [TensorSig(n, "TYPE_STRING", (1,)) for n in TEXT_INPUTS[: 2 if pair else 1]]
    cfg: dict[str, Any] = {
        "name": TOKENIZER_MODEL,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": _io(text_inputs),
        "output": _io([TensorSig(s.name, "TYPE_INT64", (-1,)) for s in model_inputs]),
        "dynamic_batching": _batching(spec),
        "instance_group": [{"count": spec.tokenizer_instances, "kind": Enum("KIND_CPU")}],
        "parameters": {
            "max_length": str(max_length),
            "padding": spec.tokenizer_padding,
            "output_names": ",".join(s.name for s in model_inputs),
            "text_pair": "1" if pair else "0",
        },
    }
    return to_pbtxt(cfg) + "\n"


def ensemble_config(name: str, model: str, model_inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, pair: bool) -> str:
    texts = list(TEXT_INPUTS[: 2 if pair else 1])
    cfg: dict[str, Any] = {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": _io([TensorSig(n, "TYPE_STRING", (1,)) for n in texts]),
        "output": _io(outputs),
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": TOKENIZER_MODEL,
                    "model_version": -1,
                    "input_map": {t: t for t in texts},
                    "output_map": {s.name: f"_{s.name}" for s in model_inputs},
                },
                {
                    "model_name": model,
                    "model_version": -1,
                    "input_map": {s.name: f"_{s.name}" for s in model_inputs},
                    "output_map": {s.name: s.name for s in outputs},
                },
            ]
        },
    }
    return to_pbtxt(cfg) + "\n"


# ---------------------------------------------------------------------------------------------
# validation


def model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise OptionalDependencyError("tritonclient", "triton", "validating Triton model configs") from exc
    return model_config_pb2


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt with Triton's ModelConfig schema; any unknown field or bad value is an error."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise DeployError(f"{where} does not parse as Triton's ModelConfig: {exc}", "this is a generator bug; report it") from exc


def config_signature(tensors: Sequence[Any]) -> list[TensorSig]:
    pb2 = model_config_pb2()
    return [TensorSig(t.name, pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in tensors]


def _compare(where: str, role: str, got: Sequence[TensorSig], want: Sequence[TensorSig]) -> None:
    g = {s.name: s for s in got}
    w = {s.name: s for s in want}
    if set(g) != set(w):
        raise DeployError(f"{where}: {role} names {sorted(g)} differ from the model's {sorted(w)}.", "this is a generator bug; report it")
    for name, s in w.items():
        if g[name].data_type != s.data_type or g[name].dims != s.dims:
            raise DeployError(
                f"{where}: {role} '{name}' is {g[name].data_type} {list(g[name].dims)} but the model has {s.data_type} {list(s.dims)}.",
                "this is a generator bug; report it",
            )


def check_model_config(config: Any, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], where: str) -> None:
    """Inputs/outputs of a parsed config equal the ONNX graph's (or engine's); batching is on."""
    if config.max_batch_size <= 0:
        raise DeployError(f"{where}: max_batch_size must be > 0 for dynamic batching.")
    _compare(where, "input", config_signature(config.input), inputs)
    _compare(where, "output", config_signature(config.output), outputs)


def check_ensemble(config: Any, configs: Mapping[str, Any], where: str) -> None:
    """Every step names a model of the repository, maps exactly its inputs/outputs, and every tensor it
    reads is produced earlier (or is an ensemble input); the ensemble outputs are produced with the
    step model's types and dims."""
    available = {s.name: s for s in config_signature(config.input)}
    for step in config.ensemble_scheduling.step:
        if step.model_name not in configs:
            raise DeployError(f"{where}: step model '{step.model_name}' is not in the repository.")
        sub = configs[step.model_name]
        sub_in = {s.name: s for s in config_signature(sub.input)}
        sub_out = {s.name: s for s in config_signature(sub.output)}
        if set(step.input_map) != set(sub_in):
            raise DeployError(f"{where}: step '{step.model_name}' maps inputs {sorted(step.input_map)}, the model takes {sorted(sub_in)}.")
        for key, tensor in step.input_map.items():
            if tensor not in available:
                raise DeployError(f"{where}: step '{step.model_name}' reads '{tensor}', which nothing produces before it.")
            if available[tensor].data_type != sub_in[key].data_type:
                raise DeployError(f"{where}: '{tensor}' is {available[tensor].data_type} but '{step.model_name}' input '{key}' is {sub_in[key].data_type}.")
        for key, tensor in step.output_map.items():
            if key not in sub_out:
                raise DeployError(f"{where}: step '{step.model_name}' has no output '{key}'.")
            available[tensor] = TensorSig(tensor, sub_out[key].data_type, sub_out[key].dims)
    for out in config_signature(config.output):
        if out.name not in available:
            raise DeployError(f"{where}: ensemble output '{out.name}' is produced by no step.")
        if (available[out.name].data_type, available[out.name].dims) != (out.data_type, out.dims):
            raise DeployError(f"{where}: ensemble output '{out.name}' is declared {out.data_type} {list(out.dims)} but produced as {available[out.name].data_type} {list(available[out.name].dims)}.")


# ---------------------------------------------------------------------------------------------
# repository writer


@dataclass
class ModelEntry:
    name: str
    variant: str
    target: str
    kind: str  # backend or platform
    ensemble: str
    cpu_servable: bool  # loads on a CPU-only tritonserver (Python backend)
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    files: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Repository:
    path: Path
    run_dir: str
    recipe: str
    task: str
    best_variant: str | None
    max_seq_length: int
    text_inputs: list[str]
    models: list[ModelEntry]
    tokenizer: str = TOKENIZER_MODEL

    def cpu_models(self) -> list[str]:
        """Names to load on a CPU-only server: the tokenizer, the Python-backend models and their ensembles."""
        names = [self.tokenizer]
        for m in self.models:
            if m.cpu_servable:
                names += [m.name, m.ensemble]
        return names

    def ensemble(self, variant: str, target: str = "python-onnxruntime") -> str:
        for m in self.models:
            if m.variant == variant and m.target == target:
                return m.ensemble
        raise KeyError(f"no {target} model for variant {variant} in {self.path}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["cpu_models"] = self.cpu_models()
        return d

    @classmethod
    def load(cls, path: Path) -> Repository:
        d = json.loads((Path(path) / MANIFEST).read_text())
        d.pop("cpu_models", None)
        d["path"] = Path(path)
        d["models"] = [ModelEntry(**m) for m in d["models"]]
        return cls(**d)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _copy_onnx(src: Path, dst: Path) -> list[str]:
    """The ONNX file (and an external-data sidecar, which must keep its recorded name)."""
    _link_or_copy(src, dst)
    files = [dst.name]
    data = src.with_name(src.name + ".data")
    if data.exists():
        _link_or_copy(data, dst.with_name(data.name))
        files.append(data.name)
    return files


def model_name(variant: str) -> str:
    """A row's name as a Triton model name: `int8-max@openvino` -> `int8-max.openvino` (clients URL-encode
    '@' in the model path, which Triton does not decode)."""
    return variant.replace("@", ".")


def resolve_variants(requested: Sequence[str], best: str | None, available: Mapping[str, Any]) -> list[str]:
    """`best` -> the run's selected variant; unknown or failed variants are an error; order kept, no repeats."""
    out: list[str] = []
    for name in requested:
        if name == "best":
            if best is None:
                raise DeployError(
                    "the run selected no best variant (every INT8 variant failed), so 'best' cannot be deployed.",
                    f"name the variants to package: quantize deploy RUN_DIR --variants {' '.join(sorted(available)) or 'float'} "
                    "(or deploy.variants in the recipe)",
                )
            name = best
        if name not in available:
            raise DeployError(
                f"variant '{name}' has no usable ONNX model in this run (have: {', '.join(sorted(available)) or 'none'}).",
                f"package some of those: quantize deploy RUN_DIR --variants {' '.join(sorted(available)[:2]) or 'float'} (or deploy.variants in the recipe)",
            )
        if name not in out:
            out.append(name)
    return out


def _save_tokenizer(recipe: Recipe, folder: Path) -> None:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": recipe.model.trust_remote_code}
    if recipe.model.revision:
        kwargs["revision"] = recipe.model.revision
    try:
        tok = AutoTokenizer.from_pretrained(recipe.model.location, **kwargs)
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot load the tokenizer of '{recipe.model.source}': {str(exc).splitlines()[0]}") from exc
    if not getattr(tok, "is_fast", False):
        raise DeployError(f"the tokenizer of '{recipe.model.source}' has no fast (Rust) version; the served tokenizer needs one.")
    tok.save_pretrained(str(folder))


def write_repository(
    run_dir: Path,
    recipe: Recipe,
    variant_files: Mapping[str, Path],
    variant_precision: Mapping[str, str],
    best_variant: str | None,
    task: str,
    out: Path | None = None,
    spec: DeploySpec | None = None,
    engines: Mapping[tuple[str, str], Path] | None = None,
    notes: Mapping[tuple[str, str], str] | None = None,
    cpu_files: Mapping[str, Path] | None = None,
    rows: Mapping[str, tuple[str | None, str | None]] | None = None,
) -> Repository:
    """Write and validate the repository in a temp folder, then move it into place (replacing a previous one).

    `variant_files`: variant name -> ONNX file; `engines`: (variant, "tensorrt") -> built plan file.
    """
    spec = spec or recipe.deploy or DeploySpec()
    out = Path(out) if out is not None else (Path(spec.output_dir) if Path(spec.output_dir).is_absolute() else run_dir / spec.output_dir)
    variants = resolve_variants(spec.variants, best_variant, variant_files)
    pair = len(recipe.data.text_columns) == 2
    max_length = recipe.model.max_seq_length
    engines = engines or {}
    model_config_pb2()  # fail before any work when tritonclient is missing

    if out.exists() and not out.is_dir():
        raise DeployError(f"the repository folder '{out}' is a file, not a folder.", "pass --out with a new or empty folder, or a repository written by an earlier deploy")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise DeployError(f"'{out}' exists and is not a model repository written by the workbench; refusing to replace it.", "pass another --out folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise DeployError(
            f"cannot write the repository next to '{out}': {exc.strerror or exc}.",
            "pass --out with a folder you can write to, or fix the permissions of its parent",
        ) from None
    make_shareable(tmp, 0o777)  # mkdtemp makes it 0700: a Triton server running as another user must read the repository
    try:
        configs: dict[str, Any] = {}
        entries: list[ModelEntry] = []
        signatures: dict[str, tuple[list[TensorSig], list[TensorSig]]] = {v: onnx_signature(variant_files[v]) for v in variants}
        first_inputs = signatures[variants[0]][0]
        for v, (ins, _) in signatures.items():
            if [s.name for s in ins] != [s.name for s in first_inputs]:
                raise DeployError(f"variants {variants[0]} and {v} take different inputs; one tokenizer cannot feed both.")

        # tokenizer
        tok_dir = tmp / TOKENIZER_MODEL
        text = tokenizer_config(first_inputs, spec, max_length, pair)
        cfg = parse_config(text, f"{TOKENIZER_MODEL}/config.pbtxt")
        if [s.name for s in config_signature(cfg.output)] != [s.name for s in first_inputs]:
            raise DeployError("tokenizer outputs do not match the model inputs.", "this is a generator bug; report it")
        configs[TOKENIZER_MODEL] = cfg
        write_text(tok_dir / "config.pbtxt", text)
        (tok_dir / "1").mkdir(parents=True)
        shutil.copyfile(PYTHON_MODELS / "tokenizer_model.py", tok_dir / "1" / "model.py")
        _save_tokenizer(recipe, tok_dir / "1" / "tokenizer")

        for v in variants:
            ins, outs = signatures[v]
            for target in spec.targets:
                backend = TARGETS.get(target)
                name = f"{model_name(v)}-{backend.suffix}"
                ens = f"{name}-text"
                mdir = tmp / name
                (mdir / "1").mkdir(parents=True)
                built = backend.build(
                    TargetInputs(
                        name=name, variant=v, folder=mdir, inputs=ins, outputs=outs, recipe=recipe, spec=spec,
                        onnx=variant_files[v], cpu_onnx=(cpu_files or {}).get(v, variant_files[v]),
                        precision=variant_precision.get(v, "float32"),
                        engine=engines.get((v, target)), engine_note=(notes or {}).get((v, target), ""),
                        runtime=(rows or {}).get(v, (None, None))[0], inference_precision=(rows or {}).get(v, (None, None))[1],
                    )
                )
                text = built.config
                cfg = parse_config(text, f"{name}/config.pbtxt")
                check_model_config(cfg, ins, outs, f"{name}/config.pbtxt")
                configs[name] = cfg
                write_text(mdir / "config.pbtxt", text)

                etext = ensemble_config(ens, name, ins, outs, spec, pair)
                ecfg = parse_config(etext, f"{ens}/config.pbtxt")
                write_text(tmp / ens / "config.pbtxt", etext)
                (tmp / ens / "1").mkdir(parents=True, exist_ok=True)
                configs[ens] = ecfg
                check_ensemble(ecfg, configs, f"{ens}/config.pbtxt")
                entries.append(
                    ModelEntry(
                        name=name,
                        variant=v,
                        target=target,
                        kind=built.kind,
                        ensemble=ens,
                        cpu_servable=backend.cpu_servable,
                        inputs=[s.to_dict() for s in ins],
                        outputs=[s.to_dict() for s in outs],
                        files=built.files,
                        note=built.note,
                    )
                )
        repo = Repository(
            path=out,
            run_dir=str(run_dir),
            recipe=recipe.name,
            task=task,
            best_variant=best_variant,
            max_seq_length=max_length,
            text_inputs=list(TEXT_INPUTS[: 2 if pair else 1]),
            models=entries,
        )
        write_json(tmp / MANIFEST, repo.to_dict())
        # checked before it replaces anything: a repository that fails validation is never left in place
        validate_repository(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return repo


# ---------------------------------------------------------------------------------------------
# deploy targets: one Triton model per variant and target


def _python_onnxruntime(t: TargetInputs) -> TargetModel:
    text = python_onnxruntime_config(t.name, t.inputs, t.outputs, t.spec, t.recipe.engine)
    shutil.copyfile(PYTHON_MODELS / "onnxruntime_model.py", t.folder / "1" / "model.py")
    # ONNX Runtime on CPU serves the graph the run scored and timed there (the fused engine graph)
    return TargetModel(text, "python", ["model.py", *_copy_onnx(t.cpu_onnx, t.folder / "1" / "model.onnx")])


def _onnxruntime(t: TargetInputs) -> TargetModel:
    text = onnxruntime_config(t.name, t.inputs, t.outputs, t.spec, t.precision)
    return TargetModel(text, "onnxruntime_onnx", _copy_onnx(t.onnx, t.folder / "1" / "model.onnx"))


def _tensorrt(t: TargetInputs) -> TargetModel:
    text = tensorrt_config(t.name, t.inputs, t.outputs, t.spec)
    if t.engine is not None:
        _link_or_copy(t.engine, t.folder / "1" / "model.plan")
        return TargetModel(text, "tensorrt_plan", ["model.plan"])
    return TargetModel(text, "tensorrt_plan", note=t.engine_note or "no engine: build 1/model.plan on the serving GPU (quantize deploy RUN_DIR)")


def _build_plan(recipe: Recipe, spec: DeploySpec, onnx_path: Path, engines_dir: Path, name: str, precision: str | None) -> Path:
    from quant_workbench.runtime.tensorrt import build_for_deploy, engine_precision

    return build_for_deploy(recipe, spec, onnx_path, engines_dir / f"{name}.plan", precision=engine_precision(precision))


def _require_tensorrt() -> None:
    from quant_workbench.runtime.tensorrt import require_tensorrt

    require_tensorrt("building the TensorRT engines of deploy.targets [tensorrt]")


# ---------------------------------------------------------------------------------------------
# OpenVINO (issue 17): Triton's `openvino` backend, and a Python-backend model running OpenVINO


def _openvino_source(t: TargetInputs) -> tuple[Path, str | None, str]:
    """The file an OpenVINO target serves, the row's inference precision, and a note: an OpenVINO row's own
    graph (the OpenVINO layout: Q/DQ on the attention matmuls too); for another engine's row, its portable
    export (float.onnx / the Q/DQ file), which OpenVINO reads as it is."""
    if t.runtime == "openvino":
        return t.cpu_onnx, t.inference_precision, ""
    note = f"{t.variant} is a {t.runtime or 'reference-engine'} row: OpenVINO serves its portable ONNX; deploy its @openvino row for the OpenVINO layout"
    return t.onnx, None, note


def _ov_threads(t: TargetInputs) -> int:
    from quant_workbench.runtime.openvino import resolved_threads

    return t.spec.threads or resolved_threads(t.recipe.engine)


def openvino_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, engine: EngineSpec, threads: int, bf16: bool) -> str:
    """Triton's `openvino` backend (its parameters: INFERENCE_NUM_THREADS, NUM_STREAMS, PERFORMANCE_HINT,
    HINT_BF16; it has no f32 hint, so an f32 row is served at OpenVINO's default precision for the CPU)."""
    params = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": str(engine.openvino.streams), "PERFORMANCE_HINT": engine.openvino.hint.upper()}
    if bf16:
        params["HINT_BF16"] = "YES"
    cfg: dict[str, Any] = {
        "name": name,
        "backend": "openvino",
        "max_batch_size": spec.max_batch_size,
        "input": _io(inputs),
        "output": _io(outputs),
        "dynamic_batching": _batching(spec),
        "instance_group": [{"count": spec.instance_count, "kind": Enum("KIND_CPU")}],
        "parameters": params,
        "default_model_filename": "model.onnx",
    }
    return to_pbtxt(cfg) + "\n"


def python_openvino_config(name: str, inputs: Sequence[TensorSig], outputs: Sequence[TensorSig], spec: DeploySpec, engine: EngineSpec, threads: int, precision: str | None) -> str:
    from quant_workbench.runtime.openvino import row_precisions_of

    return _python_model_config(name, inputs, outputs, spec, {
        "model_file": "model.onnx",
        "inference_num_threads": str(threads),
        "num_streams": str(engine.openvino.streams),
        "performance_hint": engine.openvino.hint.upper(),
        # what the run scored and timed the row with (f32 | bf16; default = OpenVINO's own choice)
        "inference_precision": precision or str(row_precisions_of(engine)[0]),
        "enable_cpu_pinning": "1" if engine.openvino.pinning else "0",
    })


def _python_openvino(t: TargetInputs) -> TargetModel:
    source, precision, note = _openvino_source(t)
    text = python_openvino_config(t.name, t.inputs, t.outputs, t.spec, t.recipe.engine, _ov_threads(t), precision)
    shutil.copyfile(PYTHON_MODELS / "openvino_model.py", t.folder / "1" / "model.py")
    return TargetModel(text, "python", ["model.py", *_copy_onnx(source, t.folder / "1" / "model.onnx")], note=note)


def _openvino(t: TargetInputs) -> TargetModel:
    source, precision, note = _openvino_source(t)
    if precision == "f32":
        note = "; ".join(x for x in (note, "Triton's openvino backend has no f32 hint: served at OpenVINO's default precision for the CPU (bf16 where it has bf16); use python-openvino for f32") if x)
    text = openvino_config(t.name, t.inputs, t.outputs, t.spec, t.recipe.engine, _ov_threads(t), precision == "bf16")
    return TargetModel(text, "openvino", _copy_onnx(source, t.folder / "1" / "model.onnx"), note=note)


def _require_openvino() -> None:
    from quant_workbench.runtime.openvino import require_openvino

    require_openvino("deploy.targets [python-openvino]")


# Declaration order is the order of the names in recipe messages and the JSON schema.
TARGETS.register("python-onnxruntime", DeployBackend(suffix="cpu", build=_python_onnxruntime, cpu_servable=True))
TARGETS.register("onnxruntime", DeployBackend(suffix="ort", build=_onnxruntime))
TARGETS.register(
    "tensorrt",
    DeployBackend(suffix="trt", build=_tensorrt, build_engine=_build_plan, preflight=_require_tensorrt, engine_label="TensorRT"),
)
TARGETS.register("python-openvino", DeployBackend(suffix="ov-cpu", build=_python_openvino, cpu_servable=True, preflight=_require_openvino))
TARGETS.register("openvino", DeployBackend(suffix="ov", build=_openvino))


def validate_repository(path: Path) -> dict[str, Any]:
    """Re-parse every config.pbtxt of a written repository and re-check it against its ONNX file or
    engine and the ensembles against their steps. Returns the parsed configs' names -> platform/backend."""
    repo = Repository.load(path)
    configs: dict[str, Any] = {}
    for cfg_path in sorted(Path(path).glob("*/config.pbtxt")):
        configs[cfg_path.parent.name] = parse_config(cfg_path.read_text(), str(cfg_path))
    for m in repo.models:
        cfg = configs[m.name]
        onnx_file = Path(path) / m.name / "1" / "model.onnx"
        if onnx_file.exists():
            ins, outs = onnx_signature(onnx_file)
        else:
            ins = [TensorSig(d["name"], d["data_type"], tuple(d["dims"])) for d in m.inputs]
            outs = [TensorSig(d["name"], d["data_type"], tuple(d["dims"])) for d in m.outputs]
            plan = Path(path) / m.name / "1" / "model.plan"
            if plan.exists():
                from quant_workbench.runtime.tensorrt import engine_signature

                ins, outs = engine_signature(plan)
        check_model_config(cfg, ins, outs, f"{m.name}/config.pbtxt")
        check_ensemble(configs[m.ensemble], configs, f"{m.ensemble}/config.pbtxt")
    return {name: (c.platform or c.backend) for name, c in configs.items()}
