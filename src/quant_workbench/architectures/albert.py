"""ALBERT: one shared layer (per layer group) runs `num_hidden_layers` times.

Each application is a call site: at load time the transformer gets `encoder.layer.N`, one module tree
per application sharing the shared layer's Parameters, and runs them in order, so every application
has its own quantizers and name (`encoder.layer.0` = the first application). The original
`albert_layer_groups` stay in the tree (state_dict and checkpoints are unchanged) but are never
candidates: they no longer run.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from .base import Architecture, BlockLayout, shared_clone
from .registry import register


@register
class Albert(Architecture):
    name = "ALBERT"
    model_types = ("albert",)
    layout = BlockLayout(
        qkv=("attention.query", "attention.key", "attention.value"),
        attention_output="attention.dense",
        ffn_in="ffn",
        ffn_out="ffn_output",
        attention="attention",  # AlbertAttention calls the registered attention function
        value="attention.value",
    )
    excluded_pattern = r"(?:^|\.)albert_layer_groups(?:\.|$)"
    unsupported = {
        "residual_adds": "both of its residual adds sit inside AlbertAttention.forward and AlbertLayer.forward, which the workbench does not rewrite",
        "smoothquant": "every application shares one set of weights but sees different activations, so no single smoothing factor keeps each call exact",
    }

    def add_call_sites(self, hf: nn.Module) -> None:
        transformers_ = [m for m in hf.modules() if hasattr(m, "albert_layer_groups") and not hasattr(m, "layer")]
        for transformer in transformers_:
            cfg: Any = transformer.config
            groups: Any = transformer.albert_layer_groups
            per_group = cfg.num_hidden_layers / cfg.num_hidden_groups
            calls: list[nn.Module] = []
            for i in range(cfg.num_hidden_layers):
                group = groups[int(i / per_group)]  # AlbertTransformer's own rule
                calls += [shared_clone(layer) for layer in group.albert_layers]
            transformer.layer = nn.ModuleList(calls)
            transformer.forward = types.MethodType(_unrolled_forward, transformer)


def _unrolled_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """AlbertTransformer.forward over the call sites `self.layer` (same order of applications)."""
    from transformers.modeling_outputs import BaseModelOutput

    hidden_states = self.embedding_hidden_mapping_in(hidden_states)
    for layer in self.layer:
        hidden_states = layer(hidden_states, attention_mask, **kwargs)
    return BaseModelOutput(last_hidden_state=hidden_states)
