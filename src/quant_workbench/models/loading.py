"""Load a Hugging Face encoder and wrap it with its task head as one exportable module."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quant_workbench.config.recipe import ModelSpec
from quant_workbench.core.artifacts import hash_json, hash_tree
from quant_workbench.core.errors import ModelError
from quant_workbench.models import EncoderWithHead
from quant_workbench.quantize.architectures import Architecture, architecture_for
from quant_workbench.quantize.modules import ATTENTION_FUNCTION, register_attention_function

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# ModelSpec fields that only decide whether a run may start (pipeline/sanity.py), not what the model computes:
# left out of the model's fingerprint, so changing them reuses every artifact and calibration cache
_GATE_FIELDS = {"max_unknown_token_rate", "allow_untrained_head"}


@dataclass
class LoadedModel:
    model: EncoderWithHead
    tokenizer: Any
    spec: ModelSpec
    architecture: Architecture
    input_names: list[str]
    fingerprint: str
    vocab_size: int
    num_labels: int | None
    local_dir: Path | None
    # sequence classification: why nothing shows the head was trained (new, resized, placeholder labels);
    # None when the checkpoint's head was loaded as it is, under real class names (sanity.check_head)
    head_problem: str | None = None

    @property
    def output_name(self) -> str:
        return self.model.output_name


def _dtype_argument() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; older releases only know the former."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def trained_labels(config: Any) -> list[str] | None:
    """The class names of a trained classification head in class-id order (config.id2label), or None
    when the config only has transformers' placeholders (LABEL_0, LABEL_1...): no trained head."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def check_head_labels(spec: ModelSpec, config: Any, label_names: Sequence[str]) -> None:
    """A trained head predicts class i = config.id2label[i]; the data's class ids must mean the same."""
    trained = trained_labels(config)
    if trained is None or trained == list(label_names):
        return
    same_set = sorted(trained) == sorted(label_names)
    raise ModelError(
        f"model '{spec.source}' has a trained classification head for the labels {trained} (config.id2label, "
        f"in class-id order), but the data's labels are {list(label_names)} (data.label_names, in class-id order).",
        f"set data.label_names: {trained} so that class ids follow the model"
        if same_set
        else "use data labelled with the model's classes, or a model without a trained head (then fine-tune it with finetune:)",
    )


def load_model(spec: ModelSpec, num_labels: int | None = None, label_names: Sequence[str] | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The per-tensor "Loading weights" bar is noise next to our own stage progress.
    hf_logging.disable_progress_bar()
    register_attention_function()
    location = spec.location
    local = Path(location)
    is_local = local.exists()
    # Hub ids are 'name' or 'org/name'; anything else that does not exist is a missing local path.
    looks_like_path = location.startswith((".", "/", "~")) or location.count("/") > 1 or spec.source.startswith("package:")
    if not is_local and looks_like_path:
        raise ModelError(
            f"model.source '{spec.source}' resolves to '{location}', which does not exist.",
            "point model.source at a folder with config.json and weights, or at a Hub id like 'bert-base-uncased'",
        )
    if is_local and not (local / "config.json").is_file():
        raise ModelError(
            f"model folder '{location}' has no config.json.",
            "point model.source at the folder that holds config.json, the weights and the tokenizer files",
        )
    common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        common["revision"] = spec.revision
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc, "config", local if is_local else None) from exc
    # Before the weights: an architecture the workbench cannot quantize fails without loading them.
    arch = architecture_for(config)
    if spec.task == "sequence-classification" and label_names is not None:
        check_head_labels(spec, config, label_names)
    head_problem: str | None = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except (OSError, ValueError) as exc:
        raise _load_error(spec, exc, "tokenizer", local if is_local else None) from exc
    try:
        # float32 whatever the checkpoint stores: transformers 5 loads an fp16/bf16 checkpoint in that
        # dtype, which would make the "float" baseline half precision and fp16 training diverge (NaN)
        weights = {_dtype_argument(): torch.float32}
        if spec.task == "sequence-classification":
            kwargs: dict[str, Any] = {**weights}
            if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
                kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
            hf, loading = AutoModelForSequenceClassification.from_pretrained(
                location, attn_implementation=ATTENTION_FUNCTION, output_loading_info=True, **common, **kwargs
            )
            head_problem = _head_problem(config, loading)
        else:
            hf = AutoModel.from_pretrained(location, attn_implementation=ATTENTION_FUNCTION, **common, **weights)
    except _WEIGHT_ERRORS as exc:
        raise _load_error(spec, exc, "weights", local if is_local else None) from exc
    limit = arch.sequence_limit(config)
    if limit is not None and spec.max_seq_length > limit:
        raise ModelError(
            f"model.max_seq_length={spec.max_seq_length} exceeds the {arch.name} model's limit of {limit} tokens"
            f" (max_position_embeddings={getattr(config, 'max_position_embeddings', None)}).",
            # the recipe refuses benchmark lengths above model.max_seq_length, so both must shrink
            f"set model.max_seq_length to {limit} or less, and every benchmark.seq_lengths entry (and "
            f"search.latency.seq_length) to at most that, e.g. --set model.max_seq_length={limit} --set benchmark.seq_lengths=[{limit}]",
        )
    hf.eval()
    arch.add_call_sites(hf)
    if spec.num_layers is not None:  # a depth-truncated model; num_layers is part of spec, so of the fingerprint below
        arch.keep_layers(hf, spec.num_layers)
    input_names = [n for n in MODEL_INPUTS if n in tokenizer.model_input_names]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        input_names = ["input_ids", "attention_mask"]
    if not arch.uses_token_type_ids(config):
        # The model would ignore them: an ONNX input nobody reads only confuses deployments.
        input_names = [n for n in input_names if n != "token_type_ids"]
    if is_local:
        fingerprint = hash_json({"files": hash_tree(local, ("*.json", "*.safetensors", "*.bin", "*.txt")), "spec": spec.model_dump(exclude=_GATE_FIELDS), "num_labels": num_labels})
    else:
        fingerprint = hash_json({"hub": location, "revision": spec.revision, "spec": spec.model_dump(exclude=_GATE_FIELDS), "num_labels": num_labels})
    wrapped = EncoderWithHead(hf, spec.task, spec.pooling, spec.normalize_embeddings, input_names).eval()
    return LoadedModel(
        model=wrapped,
        tokenizer=tokenizer,
        spec=spec,
        architecture=arch,
        input_names=input_names,
        fingerprint=fingerprint,
        vocab_size=int(config.vocab_size),
        num_labels=getattr(hf.config, "num_labels", None) if spec.task == "sequence-classification" else None,
        local_dir=local if is_local else None,
        head_problem=head_problem,
    )


def _head_problem(config: Any, loading: dict[str, Any]) -> str | None:
    """Why the loaded classification head may be untrained, from transformers' loading report."""
    mismatched = sorted(loading.get("mismatched_keys") or (), key=lambda k: str(k[0]))
    missing = sorted(str(k) for k in loading.get("missing_keys") or ())
    if mismatched:
        saved, wanted = tuple(mismatched[0][1]), tuple(mismatched[0][2])
        return (
            f"was resized to the data's {wanted[0]} classes from the checkpoint's {saved[0]} (transformers re-initialised "
            f"{', '.join(str(k[0]) for k in mismatched[:3])} at random)"
        )
    if missing:
        return f"is not in the checkpoint (transformers initialised {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} at random)"
    if trained_labels(config) is None:
        names = [str(v) for v in (getattr(config, "id2label", None) or {}).values()][:3]
        return f"has only placeholder labels in config.id2label ({', '.join(names)}...), so nothing shows it was trained"
    return None


def _weight_errors() -> tuple[type[BaseException], ...]:
    """What reading damaged or missing weight files raises (safetensors' own error, torch.load's)."""
    import pickle

    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - a transformers dependency
        pass
    return tuple(errors)


_WEIGHT_ERRORS = _weight_errors()


def _load_error(spec: ModelSpec, exc: BaseException, what: str = "model", local: Path | None = None) -> ModelError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if local is None:
        return ModelError(
            f"cannot load the {what} of model '{spec.source}': {text}",
            "for a Hub id you need network access (or a local copy in the HF cache); "
            "set trust_remote_code: true only for models that need custom code",
        )
    if what == "config":
        hint = (
            "transformers cannot read the folder's config.json: restore it from the model's original copy "
            "(a model_type transformers does not know needs model.trust_remote_code: true and its code)"
        )
    elif what == "tokenizer":
        hint = "put the model's tokenizer files (tokenizer.json / vocab.txt, tokenizer_config.json, as save_pretrained writes them) in that folder"
    elif isinstance(exc, OSError) and "no file named" in text:
        hint = "the folder has no weights file: save the model there with model.save_pretrained(folder) (model.safetensors), or copy its weights in"
    else:
        hint = (
            "the weights file is damaged or truncated (an interrupted copy or download): restore it from the original, "
            "or save the model again with model.save_pretrained(folder)"
        )
    return ModelError(f"cannot load the {what} in model folder '{local}': {type(exc).__name__}: {text.rstrip('.')}.", hint)


def tokenize(
    tokenizer: Any,
    texts: Sequence[str] | Sequence[tuple[str, str]],
    max_length: int,
    input_names: Sequence[str],
) -> dict[str, np.ndarray]:
    if texts and isinstance(texts[0], tuple):
        first = [t[0] for t in texts]
        second = [t[1] for t in texts]
        enc = tokenizer(first, second, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    else:
        enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    feed = {n: np.asarray(enc[n], dtype=np.int64) for n in input_names if n in enc}
    if "token_type_ids" in input_names and "token_type_ids" not in feed:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return feed


def batches(
    tokenizer: Any,
    texts: Sequence[str] | Sequence[tuple[str, str]],
    batch_size: int,
    max_length: int,
    input_names: Sequence[str],
) -> Iterator[dict[str, np.ndarray]]:
    """Tokenized batches in input order (padding per batch keeps CPU work proportional to real length)."""
    for start in range(0, len(texts), batch_size):
        yield tokenize(tokenizer, texts[start : start + batch_size], max_length, input_names)


def to_torch(feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in feed.items()}
