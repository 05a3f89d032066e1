"""DeBERTa-v2 / v3: disentangled attention computed in its own forward.

With `share_att_key` (DeBERTa-v3's default) `query_proj` and `key_proj` run a second time per layer,
on the relative-position embeddings. Each such call is a call site: a child module
`<proj>.rel_embeddings` sharing the projection's Parameters, with its own quantizers, so
`ignore: [...query_proj.rel_embeddings]` keeps only that call in float and `...query_proj` both.
The input of those calls is a constant of the weights (a fixed span of `rel_embeddings`, whatever the
sequence length), so the Q/DQ export folds them into their outputs (export/qdq.py, `finish_graph`).
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from quant_workbench.quantize.architectures.base import Architecture, BlockLayout, shared_clone
from quant_workbench.quantize.architectures.registry import register

_SITE = "rel_embeddings"
# which relative-attention term reads each projection's second call
_TERM = {"query_proj": "p2c", "key_proj": "c2p"}


@register
class DebertaV2(Architecture):
    name = "DeBERTa-v2"
    model_types = ("deberta-v2",)
    layout = BlockLayout(
        qkv=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        attention_output="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        attention=None,
        residual_adds=(("attention.output", "residual_add"), ("output", "residual_add")),
        value="attention.self.value_proj",
    )
    constant_call_site = _SITE
    unsupported = {
        "attention_matmuls": "its attention (content, content->position and position->content terms) is computed in DisentangledSelfAttention's own forward",
        "smoothquant": "query_proj/key_proj also project the relative-position embeddings, which a smoothing factor on their weights would change",
    }

    def sequence_limit(self, config: Any) -> int | None:
        # Without absolute position embeddings (DeBERTa-v3) positions are relative and bucketed.
        return super().sequence_limit(config) if getattr(config, "position_biased_input", True) else None

    def uses_token_type_ids(self, config: Any) -> bool:
        return int(getattr(config, "type_vocab_size", 0)) > 0  # 0: the embeddings ignore them

    def add_call_sites(self, hf: nn.Module) -> None:
        for module in list(hf.modules()):
            attn: Any = module
            if type(attn).__name__ != "DisentangledSelfAttention" or not (attn.relative_attention and attn.share_att_key):
                continue
            hidden: dict[str, nn.Module] = {}
            for proj, term in _TERM.items():
                site = shared_clone(getattr(attn, proj))
                if term in attn.pos_att_type:
                    getattr(attn, proj).add_module(_SITE, site)
                else:
                    # transformers computes this projection but never reads it: a float call kept out of
                    # the module tree, so it neither calibrates nor appears as a quant point.
                    hidden[proj] = site
            object.__setattr__(attn, "_unused_call_sites", hidden)
            attn.disentangled_attention_bias = types.MethodType(_bias_with_call_sites, attn)


def _bias_with_call_sites(self: Any, *args: Any, **kwargs: Any) -> Any:
    """DisentangledSelfAttention.disentangled_attention_bias with `query_proj` / `key_proj` resolved to
    their relative-position call sites for its duration."""
    saved = {proj: self._modules[proj] for proj in _TERM}
    try:
        for proj, module in saved.items():
            site = module._modules.get(_SITE)
            self._modules[proj] = site if site is not None else self._unused_call_sites[proj]
        return type(self).disentangled_attention_bias(self, *args, **kwargs)
    finally:
        self._modules.update(saved)
