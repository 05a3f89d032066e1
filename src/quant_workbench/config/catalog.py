"""The facts a recipe validates, by name: calibration methods, quantization schemes (number formats), engines,
deploy targets and reference rows. The recipe schema (config/recipe.py) checks its values against these registries.

Static data: this module imports nothing of the implementations (pydantic only, through core/registry.py),
so loading and validating a recipe never imports torch, ONNX Runtime, OpenVINO, NNCF or transformers
(tests/test_import_graph.py checks it in a fresh interpreter). Each implementation registers its behaviour
under the same names in a registry of its own package:

    calibration method  -> quantize/methods.py   AMAX_METHODS  (the clipping range from a histogram)
    quantization scheme -> quantize/schemes.py   reads SCHEMES (the facts below are all a scheme is)
    engine              -> runtime/<engine>.py   BACKENDS      (runtime/base.py: open, preflight, summary)
    deploy target       -> deploy/triton.py      TARGETS       (deploy/targets.py: the model folder builder)
    reference row       -> export/graphs.py, export/openvino.py  REFERENCE_BUILDERS (export/references.py)

tests/test_registries.py checks that both sides name the same entries. Adding one is one file that declares
both sides, listed in a recipe's `extensions` (config/extensions.py loads it before validation;
docs/extending.md); built into the package, its facts are a declaration here. Declaration order is the
order of the names in recipe messages, defaults and the JSON schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from quant_workbench.core.registry import Registry

# ---------------------------------------------------------------------------------------------
# calibration methods (quantization.calibration.methods)


@dataclass(frozen=True)
class CalibrationMethod:
    """A calibration method: how one quantizer's clipping range is chosen from its collected statistics."""

    description: str


CALIBRATORS: Registry[CalibrationMethod] = Registry("calibration method")
CALIBRATORS.register("max", CalibrationMethod("the largest absolute value seen"))
CALIBRATORS.register("percentile", CalibrationMethod("the given percentile of the absolute values (calibration.percentile)"))
CALIBRATORS.register("entropy", CalibrationMethod("the range minimising the KL divergence of the quantized histogram (TensorRT's)"))
CALIBRATORS.register("mse", CalibrationMethod("the range minimising the expected squared quantize-dequantize error"))


# ---------------------------------------------------------------------------------------------
# quantization schemes of the variants (quantization.compare): a number format and what is done to the
# model for it (SmoothQuant)


@dataclass(frozen=True)
class SchemeFacts:
    """What a quantization scheme (an entry of quantization.compare) is and what it needs; the recipe validates
    against these facts."""

    precision: Literal["int8", "fp8"]
    # False: no calibration and no Q/DQ export per method; the run builds its one variant itself
    calibrated: bool = True
    # SmoothQuant-rewritten model, one scheme per quantization.smoothquant alpha
    smoothquant: bool = False
    min_opset: int | None = None
    min_opset_why: str = ""
    # calibration method -> why it is not defined for this scheme
    rejects_methods: Mapping[str, str] = field(default_factory=dict)
    # set when the scheme runs on ONNX Runtime's CPU kernels only: why
    ort_cpu_only: str = ""


SCHEMES: Registry[SchemeFacts] = Registry("quantization scheme")
SCHEMES.register("int8", SchemeFacts(precision="int8"))
SCHEMES.register("int8-smoothquant", SchemeFacts(precision="int8", smoothquant=True))
SCHEMES.register(
    "fp8",
    SchemeFacts(
        precision="fp8",
        min_opset=19,
        min_opset_why="ONNX QuantizeLinear/DequantizeLinear with float8e4m3fn",
        rejects_methods={"entropy": "KL over uniformly spaced integer levels"},
    ),
)
# built by the run itself from the fused float graph (export/graphs.py), no calibration
SCHEMES.register(
    "int8-dynamic",
    SchemeFacts(
        precision="int8",
        calibrated=False,
        ort_cpu_only="activations are quantized at run time; TensorRT needs static scales",
    ),
)


# ---------------------------------------------------------------------------------------------
# engines (engine.runtime, engine.runtimes)


@dataclass(frozen=True)
class EngineFacts:
    """An engine the recipe may name; what runs it is runtime/<engine>.py's EngineBackend."""

    label: str  # what reports call the engine


ENGINES: Registry[EngineFacts] = Registry("engine runtime")
ENGINES.register("onnxruntime", EngineFacts(label="ONNX Runtime"))
ENGINES.register("openvino", EngineFacts(label="OpenVINO"))
ENGINES.register("tensorrt", EngineFacts(label="TensorRT"))


# ---------------------------------------------------------------------------------------------
# deploy targets (deploy.targets): Triton model folders, built by deploy/triton.py


@dataclass(frozen=True)
class DeployTargetFacts:
    """A deploy target the recipe may name; its model folder is built by deploy/triton.py."""

    description: str


DEPLOY_TARGETS: Registry[DeployTargetFacts] = Registry("deploy target")
DEPLOY_TARGETS.register("python-onnxruntime", DeployTargetFacts("Python backend running ONNX Runtime on CPU (tokenizer included)"))
DEPLOY_TARGETS.register("onnxruntime", DeployTargetFacts("Triton's ONNX Runtime backend"))
DEPLOY_TARGETS.register("tensorrt", DeployTargetFacts("Triton's TensorRT backend, a plan built per GPU"))
DEPLOY_TARGETS.register("python-openvino", DeployTargetFacts("Python backend running OpenVINO on CPU"))
DEPLOY_TARGETS.register("openvino", DeployTargetFacts("Triton's OpenVINO backend"))


# ---------------------------------------------------------------------------------------------
# reference rows (references): a standard tool's graph scored and timed beside the variants


@dataclass(frozen=True)
class ReferenceRow:
    """What a reference row is; its graph is built by the builder registered under the same name
    (export/references.py REFERENCE_BUILDERS: ONNX Runtime's in export/graphs.py, OpenVINO's in export/openvino.py)."""

    precision: Literal["float32", "int8"]
    calibration_method: str | None
    # the engine that runs the row (a run lists the rows of the engines it runs); `file` is the artifact's
    # name in models/ ({kind} is the reference's name), for engines that read more than ONNX
    runtime: str = "onnxruntime"
    file: str = "ref-{kind}.onnx"
    inference_precision: str | None = None  # None: the engine's default (what a user who sets nothing gets)


REFERENCES: Registry[ReferenceRow] = Registry("reference")
# the ONNX Runtime rows first: the default `references` order
REFERENCES.register("ort-float", ReferenceRow(precision="float32", calibration_method=None))
REFERENCES.register("ort-dynamic", ReferenceRow(precision="int8", calibration_method="dynamic (run time)"))
REFERENCES.register("ort-static", ReferenceRow(precision="int8", calibration_method="minmax"))
REFERENCES.register(
    "openvino-float",
    ReferenceRow(precision="float32", calibration_method=None, runtime="openvino", file="float.onnx", inference_precision="default"),
)
REFERENCES.register(
    "openvino-nncf",
    ReferenceRow(
        precision="int8", calibration_method="nncf (transformer preset)", runtime="openvino",
        file="ref-openvino-nncf.xml", inference_precision="default",
    ),
)
