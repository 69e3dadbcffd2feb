"""What LLM calls cost: list prices per model, and a call's cost from its usage."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError


@dataclass(frozen=True)
class Price:
    """USD per million tokens: prompt, completion, and prompt tokens the provider served
    from its cache (``usage.prompt_tokens_details.cached_tokens``)."""

    prompt: float
    completion: float
    cached_prompt: float


#: List prices; override with PAPERTAG_PRICES='{"model": [in, out]}' or [in, out, cached_in].
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
}


#: The Batch API's price, as a share of the live price (OpenAI's: half).
BATCH_DISCOUNT = 0.5


def price_for(model: str) -> Price | None:
    return _price_for(model, os.environ.get("PAPERTAG_PRICES"))


def _price(value: Any) -> Price:
    prompt, completion, *rest = (float(v) for v in value)
    if len(rest) > 1:
        raise ValueError("too many prices")
    # Without a cached price, cached tokens cost what other prompt tokens cost.
    return Price(prompt, completion, rest[0] if rest else prompt)


#: The suffix of a dated snapshot of a model: -2024-08-06, -0613.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})")


@functools.lru_cache(maxsize=64)
def _price_for(model: str, override: str | None) -> Price | None:
    # Cached by the variable's text: asked for every call's cost, it parses once per value.
    prices = dict(PRICES)
    if override:
        try:
            prices.update({k: _price(v) for k, v in json.loads(override).items()})
        except (ValueError, TypeError, IndexError, AttributeError):
            raise ConfigError(
                'PAPERTAG_PRICES must be JSON like {"model": [usd_per_1M_in, usd_per_1M_out]} '
                "or [in, out, cached_in]"
            ) from None
    if model in prices:
        return prices[model]
    # Dated snapshots (gpt-4o-2024-08-06, gpt-4-0613) cost what their family costs; any other
    # suffix is another model (gpt-4o-minii is a typo, not gpt-4o).
    for name in prices:
        if model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name) :]):
            return prices[name]
    return None


def estimate_cost(
    model: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
) -> float | None:
    """USD for a call's usage; ``cached_tokens`` are part of ``prompt_tokens``, billed at
    the cached-input price. None without a price or a prompt count."""
    price = price_for(model)
    if price is None or prompt_tokens is None:
        return None
    cached = min(cached_tokens or 0, prompt_tokens)
    return (
        (prompt_tokens - cached) * price.prompt
        + cached * price.cached_prompt
        + (completion_tokens or 0) * price.completion
    ) / 1_000_000
