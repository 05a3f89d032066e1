"""Sanity gates: checks, run after the data and the model are loaded and before any export or
calibration work, that refuse a run whose numbers could not mean anything (issue 20).

A run that passes every check in pipeline/preflight.py can still produce a report that looks fine and means
nothing: a tokenizer that maps every word to [UNK], a classification head that was never trained, an
evaluation split too small to tell two variants apart. Each gate here is a user mistake (exit 2, one
paragraph naming the field and the fix) or, where the run can still say something, a warning that the
log and the report carry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.errors import ModelError
from quant_workbench.data.splits import Splits
from quant_workbench.models.loading import LoadedModel

# A tokenizer knowing fewer than this fraction of the embedding's rows is not the model's tokenizer (real
# checkpoints pad their vocabulary by at most a few hundred rows: DeBERTa-v3 128,001 of 128,100).
MIN_VOCABULARY_FRACTION = 0.5
# How many texts of the data the unknown-token rate is measured on (half evaluation, half calibration).
UNKNOWN_TOKEN_SAMPLE = 512
# The selection's default margin: two variants whose accuracies differ by less are "the same" to the
# reader. issue 16 adds `selection.accuracy_margin` to the recipe; until then (and when it is absent)
# this default applies.
DEFAULT_ACCURACY_MARGIN = 0.005
# The fraction of evaluation examples on which two INT8 variants disagree with float in correctness,
# for the "size needed" line: the default recipe measured 2.6-6.1 % (README, "Evaluation size").
TYPICAL_DISCORDANCE = 0.05


# ---------------------------------------------------------------------------------------------
# tokenizer


@dataclass(frozen=True)
class UnknownTokens:
    unknown: int
    tokens: int
    texts: int

    @property
    def rate(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0


def unknown_token_rate(tokenizer: Any, texts: Sequence[str] | Sequence[tuple[str, str]], max_length: int) -> UnknownTokens:
    """Share of the non-special tokens that are the tokenizer's unknown token, over `texts`."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return UnknownTokens(0, 0, len(texts))
    if isinstance(texts[0], tuple):
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], truncation=True, max_length=max_length, return_special_tokens_mask=True)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    unknown = tokens = 0
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"], strict=True):
        for i, s in zip(ids, special, strict=True):
            if not s:
                tokens += 1
                unknown += int(i == unk)
    return UnknownTokens(unknown, tokens, len(texts))


def _sample(splits: Splits) -> list[Any]:
    half = UNKNOWN_TOKEN_SAMPLE // 2
    return [*splits.evaluation.texts[:half], *splits.calibration.texts[:half]]


_TOKENIZER_FIX = (
    "put the model's own tokenizer files (tokenizer.json / vocab.txt / tokenizer_config.json, as saved by "
    "tokenizer.save_pretrained) in the model folder, next to config.json"
)


def check_vocabulary(recipe: Recipe, loaded: LoadedModel) -> None:
    """The tokenizer's vocabulary must fit the model's embedding (config.vocab_size)."""
    vocab = len(loaded.tokenizer)
    rows = loaded.vocab_size
    where = f"the tokenizer of model.source '{recipe.model.source}'"
    fix = _TOKENIZER_FIX
    if vocab > rows:
        raise ModelError(
            f"{where} has {vocab} tokens but the model's embedding has {rows} rows (config.vocab_size): ids from "
            f"{rows} up would index past the embedding table, so this tokenizer belongs to another model.",
            fix,
        )
    if vocab < MIN_VOCABULARY_FRACTION * rows:
        raise ModelError(
            f"{where} knows {vocab} tokens but the model's embedding has {rows} rows (config.vocab_size): the "
            "tokenizer files are missing (transformers then builds an empty tokenizer that turns every word into "
            "its unknown token) or belong to another model.",
            fix,
        )


def check_tokenizer(recipe: Recipe, loaded: LoadedModel, splits: Splits) -> UnknownTokens:
    """The tokenizer must be the model's: its vocabulary fits the embedding (check_vocabulary) and it
    knows the data's words (unknown-token rate at most model.max_unknown_token_rate)."""
    check_vocabulary(recipe, loaded)
    where = f"the tokenizer of model.source '{recipe.model.source}'"
    found = unknown_token_rate(loaded.tokenizer, _sample(splits), recipe.model.max_seq_length)
    limit = recipe.model.max_unknown_token_rate
    if limit is not None and found.tokens and found.rate > limit:
        raise ModelError(
            f"{where} turns {found.rate:.1%} of the data's tokens into its unknown token "
            f"'{loaded.tokenizer.unk_token}' ({found.unknown} of {found.tokens} tokens in {found.texts} texts; "
            f"model.max_unknown_token_rate is {limit:g}): the model would see mostly unknown tokens.",
            f"{_TOKENIZER_FIX}; check that data.text_columns names the text; or raise model.max_unknown_token_rate "
            f"(e.g. --set model.max_unknown_token_rate={min(1.0, math.ceil(found.rate * 20) / 20):g}) if this data really is "
            "that far from the model's vocabulary",
        )
    return found


# ---------------------------------------------------------------------------------------------
# classification head


def check_head(recipe: Recipe, loaded: LoadedModel) -> str | None:
    """A sequence classifier scores its head: a new, resized or placeholder-labelled head with no
    fine-tuning gives random predictions. Refused unless the recipe trains it (finetune:) or accepts it
    (model.allow_untrained_head: true); returns the warning to carry when it is accepted."""
    problem = loaded.head_problem
    if recipe.model.task != "sequence-classification" or problem is None or recipe.finetune is not None:
        return None
    if recipe.model.allow_untrained_head:
        return (
            f"the classification head of '{recipe.model.source}' is scored as loaded although it {problem} "
            "(model.allow_untrained_head: true): its accuracy means something only if the head was trained"
        )
    raise ModelError(
        f"model.task is sequence-classification, but the classification head of '{recipe.model.source}' {problem}, "
        "and the recipe has no finetune: section, so every variant would be scored on an untrained head (random "
        "predictions).",
        "add a finetune: section to train the head first (e.g. finetune: {epochs: 1}, with data.probe_samples as its "
        "training split), use a checkpoint fine-tuned for these labels, or, if the head is trained and only its "
        "config says otherwise, set model.allow_untrained_head: true",
    )


# ---------------------------------------------------------------------------------------------
# evaluation size


def accuracy_margin(recipe: Recipe) -> float:
    """The accuracy difference the selection treats as meaningful: `selection.accuracy_margin` when the
    recipe has it, else DEFAULT_ACCURACY_MARGIN."""
    value = getattr(recipe.selection, "accuracy_margin", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_ACCURACY_MARGIN


def min_discordant_for_significance(level: float) -> int:
    """Fewest discordant examples, all in one variant's favour, that the exact two-sided McNemar test
    calls significant at `level` (p = 2 * 0.5^k): no smaller evaluation can separate two variants."""
    return max(1, math.ceil(math.log2(2.0 / level) + 1e-12))


def evaluation_size_needed(margin: float, level: float) -> int:
    """Smallest evaluation split on which a difference of `margin` can be significant at all: the
    difference is `margin * n` examples, and even when every discordant example favours one variant it
    needs `min_discordant_for_significance` of them."""
    return math.ceil(min_discordant_for_significance(level) / margin - 1e-9)


def evaluation_size_for_half_width(margin: float, discordance: float = TYPICAL_DISCORDANCE, level: float = 0.05) -> int:
    """n for a paired interval on Δ of half-width `margin`: 1.96 * sqrt(q / n) <= margin (q = discordance)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - level / 2.0)
    return math.ceil((z / margin) ** 2 * discordance)


def check_evaluation_size(recipe: Recipe, n: int) -> str | None:
    """The warning for an evaluation split too small for any decision at the margin, or None."""
    margin = accuracy_margin(recipe)
    level = recipe.selection.level
    need = evaluation_size_needed(margin, level)
    if n >= need:
        return None
    k = min_discordant_for_significance(level)
    typical = evaluation_size_for_half_width(margin, TYPICAL_DISCORDANCE, level)
    return (
        f"the evaluation split has {n} examples (data.eval_samples): no accuracy difference of {margin * 100:.1f} points "
        f"between two variants can be significant at level {level:g} (it takes {k} discordant examples all in one "
        f"variant's favour, so n >= {need:,}), and each accuracy is known only to about ±{_wilson_half_width(n, level) * 100:.0f} "
        f"points: no candidate can be shown within the accuracy margin, so expect 'undetermined'. Use data.eval_samples >= {need:,}; "
        f"±{margin * 100:.1f} points on the paired difference needs about {typical:,} at a discordance of "
        f"{TYPICAL_DISCORDANCE:.0%} (1.96 * sqrt(q / n))"
    )


def _wilson_half_width(n: int, level: float) -> float:
    """Half-width of the widest Wilson interval (accuracy 50 %) on n examples."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - level / 2.0)
    return z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1.0 + z * z / n) if n else 1.0
