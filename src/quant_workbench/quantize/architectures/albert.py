"""ALBERT: one shared layer (per layer group) runs `num_hidden_layers` times.

Each application is a call site: at load time the transformer gets `encoder.layer.N`, one module tree
per application sharing the shared layer's Parameters, and runs them in order, so every application
has its own quantizers and name (`encoder.layer.0` = the first application). The original
`albert_layer_groups` stay in the tree (state_dict and checkpoints are unchanged) but are never
candidates: they no longer run.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quant_workbench.quantize.architectures.base import Architecture, BlockLayout, shared_clone
from quant_workbench.quantize.architectures.registry import register
from quant_workbench.quantize.modules import QuantAdd, quant_attention_forward


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
        residual_adds=(("", "residual_add"), ("attention", "residual_add")),
        value="attention.value",
    )
    excluded_pattern = r"(?:^|\.)albert_layer_groups(?:\.|$)"
    excluded_hint = (
        "ALBERT runs its shared layer (encoder.albert_layer_groups.*) once per layer, and each application is quantized as "
        "its own call site, {first} ... {last}, with quantizers named {first}.attention.query.input_quantizer and so on; "
        "name those in targets/ignore instead, e.g. {first} (one application) or "
        "'re:encoder\\.layer\\.\\d+\\.attention\\.query' (every application's query)"
    )
    unsupported = {
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

    def attach_residual_adds(self, module: nn.Module, attrs: Sequence[str]) -> None:
        module.residual_add = QuantAdd()
        forward = _attention_forward if type(module).__name__ == "AlbertAttention" else _layer_forward
        module.forward = types.MethodType(forward, module)


def _attention_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' AlbertAttention.forward with its residual add quantizable (the model is loaded
    with the workbench's attention function, so it is called directly)."""
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.attention_head_size)
    query = self.query(hidden_states).view(*hidden_shape).transpose(1, 2)
    key = self.key(hidden_states).view(*hidden_shape).transpose(1, 2)
    value = self.value(hidden_states).view(*hidden_shape).transpose(1, 2)
    dropout = 0.0 if not self.training else self.attention_dropout.p
    attn_output, attn_weights = quant_attention_forward(self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
    attn_output = self.output_dropout(self.dense(attn_output.reshape(*input_shape, -1).contiguous()))
    return self.LayerNorm(self.residual_add(hidden_states, attn_output)), attn_weights


def _layer_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """transformers' AlbertLayer.forward with its residual add quantizable."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
    ffn_output = apply_chunking_to_forward(self.ff_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output)
    out: torch.Tensor = self.full_layer_layer_norm(self.residual_add(ffn_output, attention_output))
    return out


def _unrolled_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """AlbertTransformer.forward over the call sites `self.layer` (same order of applications)."""
    from transformers.modeling_outputs import BaseModelOutput

    hidden_states = self.embedding_hidden_mapping_in(hidden_states)
    for layer in self.layer:
        hidden_states = layer(hidden_states, attention_mask, **kwargs)
    return BaseModelOutput(last_hidden_state=hidden_states)
