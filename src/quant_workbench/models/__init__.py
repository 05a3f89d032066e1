"""The model a run quantizes: a Hugging Face encoder wrapped with its task head (EncoderWithHead); loading.py
loads it.

EncoderWithHead is defined here, not in loading.py, on purpose: the ONNX exporter records every module's
class by its qualified name (`pkg.torch.onnx.class_hierarchy` metadata), so `quant_workbench.models.EncoderWithHead`
is part of every exported graph's bytes; it keeps the name it had before the package was split, and exports
stay byte-identical across the move.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class EncoderWithHead(nn.Module):
    """input ids -> embeddings (mean/CLS pooled, optionally L2-normalised) or classification logits.

    The Hugging Face model sits under `hf`, so module names inside it are the model's own names.
    """

    def __init__(self, hf: nn.Module, task: str, pooling: str, normalize: bool, input_names: Sequence[str]) -> None:
        super().__init__()
        self.hf = hf
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        self.input_names = list(input_names)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.hf(**kwargs)
        if self.task == "sequence-classification":
            logits: torch.Tensor = out.logits
            return logits
        hidden: torch.Tensor = out.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    @property
    def output_name(self) -> str:
        return "logits" if self.task == "sequence-classification" else "embeddings"
