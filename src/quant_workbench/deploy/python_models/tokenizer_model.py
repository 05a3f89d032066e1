"""Triton Python-backend model: raw strings in (`TYPE_STRING`), the encoder's int64 inputs out.

The tokenizer files sit in `<version>/tokenizer/` next to this file and are loaded with
transformers' AutoTokenizer, exactly as the workbench tokenizes (truncation at `max_length`, padding to
the longest text of each request, or to `max_length` when `padding` is `max_length`; token_type_ids
are zeros when the model takes them and the tokenizer does not produce them).

config.pbtxt parameters (string values): max_length, padding (longest | max_length), output_names
(comma-separated, the model's input names in order), text_pair ("1" when a second text input is used).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def _texts(request: Any, name: str) -> list[str]:
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_length = int(params["max_length"])
        self.padding = params.get("padding", "longest")
        self.output_names = [x for x in params["output_names"].split(",") if x]
        self.pair = params.get("text_pair", "0") == "1"

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                texts = _texts(request, "text")
                kwargs: dict[str, Any] = {
                    "padding": self.padding,
                    "truncation": True,
                    "max_length": self.max_length,
                    "return_tensors": "np",
                }
                if self.pair:
                    enc = self.tokenizer(texts, _texts(request, "text_pair"), **kwargs)
                else:
                    enc = self.tokenizer(texts, **kwargs)
                ids = np.asarray(enc["input_ids"], dtype=np.int64)
                tensors = []
                for name in self.output_names:
                    value = np.asarray(enc[name], dtype=np.int64) if name in enc else np.zeros_like(ids)
                    tensors.append(pb_utils.Tensor(name, value))
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:
                error = pb_utils.TritonError(f"tokenizer: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
