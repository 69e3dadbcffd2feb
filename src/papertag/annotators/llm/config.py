"""What ``--annotator llm`` is, without the client that calls it.

The settings (validated), the prompt and its version, the output schema, the requests and
token estimates: everything a run needs to know about the annotator before and
without talking to a server (``--dry-run`` needs nothing more);
:class:`papertag.annotators.llm.annotator.LLMAnnotator` adds the client.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from openai.types.chat import ChatCompletion

from ...errors import ConfigError
from ...taxonomy import FIELDS, Taxonomy, content_hash, load_taxonomy, prompts_dir
from ..base import DEFAULT_CONCURRENCY, MAX_PAPERS_PER_CALL, PaperInput
from .answers import SCHEMA_NAME, PaperAnswer, function_schema, parse_answers

#: Longest abstract sent to a model; longer ones are cut and the prompt says so.
MAX_ABSTRACT_CHARS = 20_000
#: Completion size of a typical full answer (three fields, evidence quotes), for estimates.
TYPICAL_COMPLETION_TOKENS = 300


#: The structured-output modes: a function tool, OpenAI's json_schema response format, a
#: JSON object (with the schema for servers that constrain decoding by it), or JSON in a
#: fenced block of plain text. The schema is in the prompt too in the last two.
MODE_NAMES = ("tools", "json_schema", "json", "md_json")


def _load_template(name: str) -> str:
    path = prompts_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read prompt template: {exc.strerror}") from None


_DELIMS = re.compile(r"</?\s*(paper|title|abstract)\b[^<>]*>", re.IGNORECASE)


def _as_data(text: str) -> str:
    """Neutralise our delimiter tags inside paper text so it cannot close the data block."""
    return _DELIMS.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")"), text)


@dataclass(frozen=True)
class Prompt:
    system: str
    #: One paper's block of the user message; a call's message is its papers' blocks.
    paper: str
    version: str

    @classmethod
    def load(cls, taxonomy: Taxonomy) -> Prompt:
        system, paper = _load_template("annotate.system.txt"), _load_template("annotate.user.txt")
        version = content_hash(f"{system}\0{paper}".encode())
        return cls(system, paper, version)

    def system_text(self, taxonomy: Taxonomy) -> str:
        """The system message: the same for every call, so render it once per annotator."""
        fields_text = []
        for f in FIELDS:
            spec = taxonomy.fields[f]
            lines = [f"{f} ({spec.description}):"]
            lines += [f"- {lab.id}: {lab.definition}" for lab in spec.labels.values()]
            fields_text.append("\n".join(lines))
        return string.Template(self.system).safe_substitute(fields="\n\n".join(fields_text))

    def user_text(self, papers: Sequence[PaperInput]) -> str:
        """The user message: the papers, numbered 1..K in the order given."""
        template = string.Template(self.paper)
        return "".join(
            template.safe_substitute(
                number=number, title=_as_data(p.title), abstract=_as_data(_cut(p.abstract))
            )
            for number, p in enumerate(papers, start=1)
        )


def _cut(abstract: str) -> str:
    if len(abstract) > MAX_ABSTRACT_CHARS:
        return abstract[:MAX_ABSTRACT_CHARS] + " [abstract truncated by papertag]"
    return abstract


def _default_mode(base_url: str | None) -> str:
    """tools for OpenAI's own API; schema-constrained JSON for local/compatible servers."""
    host = urlparse(base_url).hostname if base_url else "api.openai.com"
    if host and (
        host.endswith("openai.com") or host.endswith("openai.azure.com") or host == "openrouter.ai"
    ):
        return "tools"
    return "json"


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
    """The settings of ``--annotator llm``, checked; its prompt, schema, requests and estimates.

    Everything here works without a client: :meth:`build_request` gives the body a call
    sends and :meth:`parse_answers` reads each paper's result out of the answer, for a
    live call and for a batch file alike.
    """

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
        papers_per_call: int = 1,
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
        # Built once: the answer's function schema (instructor's), each field's ids an enum.
        self.function = function_schema(self.taxonomy)
        self.output_schema: dict[str, Any] = self.function["parameters"]
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
        if not 1 <= papers_per_call <= MAX_PAPERS_PER_CALL:
            raise ConfigError(f"--papers-per-call must be 1 to {MAX_PAPERS_PER_CALL}")
        self.papers_per_call = papers_per_call
        self.concurrency = concurrency
        self.rpm, self.tpm = rpm, tpm
        self.api_key_env = api_key_env
        self.host = urlparse(self.base_url).netloc if self.base_url else "api.openai.com"
        # What every call sends besides its papers: the system message, and the schema as a
        # parameter in tools and json_schema modes (json and md_json have it in the system
        # message). For estimates: about four characters a token.
        self._static_chars = len(self._system) + (
            len(json.dumps(self.function)) if self.mode in ("tools", "json_schema") else 0
        )

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
            "papers_per_call": self.papers_per_call,
        }

    def output_options(self) -> dict[str, Any]:
        """The request's keys that ask for the mode's structured output (besides the schema
        in the prompt of json and md_json)."""
        if self.mode == "tools":
            return {
                "tools": [{"type": "function", "function": self.function}],
                "tool_choice": {"type": "function", "function": {"name": SCHEMA_NAME}},
            }
        if self.mode == "json_schema":
            schema = {
                "name": SCHEMA_NAME,
                "description": self.function["description"],
                "schema": self.output_schema,
            }
            return {"response_format": {"type": "json_schema", "json_schema": schema}}
        if self.mode == "json":
            # llama.cpp's server constrains output by a schema given inside json_object
            # (it refuses OpenAI's json_schema type); servers that don't know the key ignore it.
            return {"response_format": {"type": "json_object", "schema": self.output_schema}}
        return {}

    # -- requests -------------------------------------------------------------------------
    def request(self, messages: list[dict[str, Any]], papers: int) -> dict[str, Any]:
        """The JSON body of a chat completion with these messages, for this many papers
        (the answer may take ``max_tokens`` for each). What is the same for every call
        comes first, the messages last (the papers last in them)."""
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens * papers,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return {**body, **self.output_options(), "messages": messages}

    def messages(self, papers: Sequence[PaperInput]) -> list[dict[str, Any]]:
        """A first ask's messages: the system message (the same for every call of a run,
        so a provider serves it from its prompt cache), then the papers."""
        return [
            {"role": "system", "content": self._system},
            {"role": "user", "content": self.prompt.user_text(papers)},
        ]

    def build_request(self, papers: Sequence[PaperInput]) -> dict[str, Any]:
        """The JSON body of the first ask for these papers (numbered 1..K as given):
        exactly what a live call POSTs to ``/v1/chat/completions``, and what a batch file
        holds for the same papers. Plain JSON types; the static part (system message,
        tools or schema) is byte-identical for every call of a run."""
        return self.request(self.messages(papers), len(papers))

    def parse_answers(
        self,
        papers: Sequence[PaperInput],
        completion: ChatCompletion | dict[str, Any] | bytes | str,
    ) -> list[PaperAnswer]:
        """One :class:`PaperAnswer` per paper of ``build_request(papers)``'s call, in order,
        from that call's completion (or its JSON body): each entry validated on its own
        against its paper's text. Never raises for a bad answer."""
        return parse_answers(
            papers,
            completion,
            mode=self.mode,
            taxonomy=self.taxonomy,
            max_tokens=self.max_tokens * len(papers),
        )

    def estimate_tokens(self, paper: PaperInput) -> tuple[int, int]:
        """(prompt, completion) tokens one paper's first ask will likely use, for --dry-run
        and --max-cost: its share of a call of ``papers_per_call`` papers.

        About four characters a token (the messages, and the schema sent as a parameter
        beside them); the completion is a full answer of a typical size, capped by
        max_tokens.
        """
        own = len(self.prompt.user_text([paper]))
        return (
            (self._static_chars // self.papers_per_call + own) // 4 + 8,
            min(self.max_tokens, TYPICAL_COMPLETION_TOKENS),
        )
