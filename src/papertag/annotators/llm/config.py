"""What ``--annotator llm`` is, without the client that calls it.

The settings (validated), the prompt and its version, the output schema, prices and
token estimates: everything a run needs to know about the annotator before and
without talking to a server (``--dry-run`` needs nothing more);
:class:`papertag.annotators.llm.annotator.LLMAnnotator` adds the client.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ...errors import ConfigError
from ...schema import Annotation
from ...taxonomy import FIELDS, Taxonomy, content_hash, load_taxonomy, prompts_dir
from ..base import DEFAULT_CONCURRENCY, PaperInput

#: Longest abstract sent to a model; longer ones are cut and the prompt says so.
MAX_ABSTRACT_CHARS = 20_000
#: Completion size of a typical full answer (three fields, evidence quotes), for estimates.
TYPICAL_COMPLETION_TOKENS = 300
#: USD per million (prompt, completion) tokens; override with PAPERTAG_PRICES='{"model": [in, out]}'.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


def price_for(model: str) -> tuple[float, float] | None:
    return _price_for(model, os.environ.get("PAPERTAG_PRICES"))


#: The suffix of a dated snapshot of a model: -2024-08-06, -0613.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})")


@functools.lru_cache(maxsize=64)
def _price_for(model: str, override: str | None) -> tuple[float, float] | None:
    # Cached by the variable's text: asked for every call's cost, it parses once per value.
    prices = dict(PRICES)
    if override:
        try:
            prices.update({k: (float(v[0]), float(v[1])) for k, v in json.loads(override).items()})
        except (ValueError, TypeError, IndexError, AttributeError):
            raise ConfigError(
                'PAPERTAG_PRICES must be JSON like {"model": [usd_per_1M_in, usd_per_1M_out]}'
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
    model: str, prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    price = price_for(model)
    if price is None or prompt_tokens is None:
        return None
    return (prompt_tokens * price[0] + (completion_tokens or 0) * price[1]) / 1_000_000


#: The structured-output modes: a function tool, OpenAI's json_schema response format, a
#: JSON object (with the schema for servers that constrain decoding by it), or JSON in a
#: fenced block of plain text. The schema is in the prompt too in the last two.
MODE_NAMES = ("tools", "json_schema", "json", "md_json")
#: The function (tools) or schema (json_schema) the model answers with.
SCHEMA_NAME = "Annotation"
SCHEMA_DESCRIPTION = "The labels of one paper: technique, modality and target_metric."


def _load_template(name: str) -> str:
    path = prompts_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read prompt template: {exc.strerror}") from None


_DELIMS = re.compile(r"</?\s*(paper|title|abstract)\s*>", re.IGNORECASE)


def _as_data(text: str) -> str:
    """Neutralise our delimiter tags inside paper text so it cannot close the data block."""
    return _DELIMS.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")"), text)


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str
    version: str

    @classmethod
    def load(cls, taxonomy: Taxonomy) -> Prompt:
        system, user = _load_template("annotate.system.txt"), _load_template("annotate.user.txt")
        version = content_hash(f"{system}\0{user}".encode())
        return cls(system, user, version)

    def system_text(self, taxonomy: Taxonomy) -> str:
        """The system message: the same for every paper, so render it once per annotator."""
        fields_text = []
        for f in FIELDS:
            spec = taxonomy.fields[f]
            lines = [f"{f} ({spec.description}):"]
            lines += [f"  - {lab.id}: {lab.definition}" for lab in spec.labels.values()]
            fields_text.append("\n".join(lines))
        return string.Template(self.system).safe_substitute(fields="\n\n".join(fields_text))

    def user_text(self, title: str, abstract: str) -> str:
        return string.Template(self.user).safe_substitute(
            title=_as_data(title), abstract=_as_data(abstract)
        )


def _default_mode(base_url: str | None) -> str:
    """tools for OpenAI's own API; schema-constrained JSON for local/compatible servers."""
    host = urlparse(base_url).hostname if base_url else "api.openai.com"
    if host and (
        host.endswith("openai.com") or host.endswith("openai.azure.com") or host == "openrouter.ai"
    ):
        return "tools"
    return "json"


def constrained_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """Annotation's JSON schema, inlined, with the allowed ids of each field as an enum.

    The pydantic schema shares one ``Label`` definition across fields; a grammar-
    constrained server can only keep ids valid if each field lists its own.
    """
    schema = Annotation.model_json_schema()
    defs = schema.pop("$defs", {})
    label = {k: v for k, v in defs["Label"].items() if k != "title"}
    for f in FIELDS:
        prop = schema["properties"][f]
        item = json.loads(json.dumps(label))
        item["properties"]["id"]["enum"] = list(taxonomy.ids(f))
        prop["items"] = item
    cand = json.loads(json.dumps({k: v for k, v in defs["Candidate"].items() if k != "title"}))
    cand["properties"]["id"]["enum"] = sorted({i for f in FIELDS for i in taxonomy.ids(f)})
    schema["properties"]["candidates"]["items"] = cand
    return schema


def _schema_in_prompt(mode: str, schema: dict[str, Any]) -> str:
    """What the system message adds in the modes whose request carries no schema a model
    must follow (json: servers that ignore the schema parameter; md_json)."""
    if mode not in ("json", "md_json"):
        return ""
    where = "in a ```json fenced block" if mode == "md_json" else "and nothing else"
    return (
        f"\nAnswer with one JSON object {where}, following this JSON schema "
        f"(the object itself, not the schema):\n{json.dumps(schema, ensure_ascii=False)}\n"
    )


class LLMConfig:
    """The settings of ``--annotator llm``, checked; its prompt, schema and estimates."""

    name = "llm"

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | Callable[[], str] | None = None,
        mode: str | None = None,
        max_reasks: int = 2,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        seed: int | None = 0,
        concurrency: int = DEFAULT_CONCURRENCY,
        rpm: float | None = None,
        tpm: float | None = None,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        if not model:
            raise ConfigError(
                "--annotator llm needs --model NAME (e.g. gpt-4o-mini, or the name your server serves)"
            )
        self.model = model
        self.taxonomy = taxonomy or load_taxonomy()
        self.prompt = Prompt.load(self.taxonomy)
        self.prompt_version = self.prompt.version
        # Built once: the answer's schema, each field's ids listed as an enum.
        self.output_schema = constrained_schema(self.taxonomy)
        self._schema_chars = len(json.dumps(self.output_schema))
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if self.base_url is not None:
            url = urlparse(self.base_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(
                    f"--base-url {self.base_url!r} is not an http:// or https:// URL with a host "
                    "(e.g. http://localhost:11434/v1)"
                )
        self.mode = mode or _default_mode(self.base_url)
        if self.mode not in MODE_NAMES:
            raise ConfigError(
                f"unknown --mode {self.mode!r}; choose one of: {', '.join(MODE_NAMES)}"
            )
        if api_key is None and not os.environ.get(api_key_env) and not self.base_url:
            raise ConfigError(
                f"no API key: set {api_key_env} (or --api-key-env NAME), or point --base-url at a local server"
            )
        self._system = self.prompt.system_text(self.taxonomy) + _schema_in_prompt(
            self.mode, self.output_schema
        )
        self.max_reasks = max_reasks
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        if concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        for name, value in (("--rpm", rpm), ("--tpm", tpm)):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be more than 0")
        self.concurrency = concurrency
        self.rpm, self.tpm = rpm, tpm
        self.api_key_env = api_key_env
        self.host = urlparse(self.base_url).netloc if self.base_url else "api.openai.com"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LLMConfig:
        """The settings among an LLMAnnotator's options (the rest configure its client)."""
        params = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in options.items() if k in params and k != "self"})

    def options(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "max_reasks": self.max_reasks,
        }

    def output_options(self) -> dict[str, Any]:
        """The arguments of ``chat.completions.create`` that ask for the mode's structured
        output (besides the schema in the prompt of json and md_json)."""
        if self.mode == "tools":
            function = {
                "name": SCHEMA_NAME,
                "description": SCHEMA_DESCRIPTION,
                "parameters": self.output_schema,
            }
            return {
                "tools": [{"type": "function", "function": function}],
                "tool_choice": {"type": "function", "function": {"name": SCHEMA_NAME}},
            }
        if self.mode == "json_schema":
            schema = {
                "name": SCHEMA_NAME,
                "description": SCHEMA_DESCRIPTION,
                "schema": self.output_schema,
            }
            return {"response_format": {"type": "json_schema", "json_schema": schema}}
        if self.mode == "json":
            # llama.cpp's server constrains output by a schema given inside json_object
            # (it refuses OpenAI's json_schema type); servers that don't know the key ignore
            # it. Not a type openai's parameters know: sent as extra_body.
            return {
                "extra_body": {
                    "response_format": {"type": "json_object", "schema": self.output_schema}
                }
            }
        return {}

    def estimate_tokens(self, paper: PaperInput) -> tuple[int, int]:
        """(prompt, completion) tokens one first attempt will likely use, for --dry-run/--max-cost.

        About four characters a token for the prompt (messages, and the schema sent as a
        parameter beside them); the completion is a full answer of a typical size, capped
        by max_tokens.
        """
        chars = sum(len(m["content"]) for m in self._messages(paper))
        # tools and json_schema send the schema as a parameter (counted as prompt tokens);
        # json and md_json have it in the system message.
        chars += self._schema_chars if self.mode in ("tools", "json_schema") else 0
        return chars // 4 + 8, min(self.max_tokens, TYPICAL_COMPLETION_TOKENS)

    def messages(self, paper: PaperInput) -> list[dict[str, str]]:
        """The chat messages of a paper's first ask (vLLM in Ray workers sends these too)."""
        return self._messages(paper)

    def _messages(self, paper: PaperInput) -> list[dict[str, str]]:
        abstract = paper.abstract
        if len(abstract) > MAX_ABSTRACT_CHARS:
            abstract = abstract[:MAX_ABSTRACT_CHARS] + " [abstract truncated by papertag]"
        return [
            {"role": "system", "content": self._system},
            {"role": "user", "content": self.prompt.user_text(paper.title, abstract)},
        ]
