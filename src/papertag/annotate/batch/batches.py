"""Sending batches and following them up: upload, create, poll, download, collect, cancel.

Every step is written to the database before the next one starts (see
:mod:`papertag.annotate.batch`), so a run killed anywhere finds on its next start what
the server already has.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
import pyarrow as pa

from ...annotators.llm.annotator import LLMAnnotator
from ...annotators.llm.client import CallTransport, summarise_response
from ...annotators.llm.prices import BATCH_DISCOUNT, estimate_cost
from ...annotators.llm.records import CallRecord, call_row
from ...db import Store, utc_now
from ...errors import ConfigError
from ..pending import Pending, paper_input
from ..writer import call_schema
from .info import COLUMNS, BatchError, BatchInfo, BatchReport, batch_info, find_batch
from .requests import request_bodies

#: OpenAI's limits of one batch: 50,000 requests, an input file of 200 MB.
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 190 * 1024 * 1024
#: The server's statuses of a batch that will change no more.
TERMINAL = ("completed", "expired", "failed", "cancelled")

#: The steps of sending and collecting a batch, in order, as the hook is told them.
STEPS = ("upload", "uploaded", "create", "created", "collect", "collected", "settle")


REQUEST_SCHEMA = pa.schema(
    [
        ("batch_uid", pa.string()),
        ("custom_id", pa.string()),
        ("position", pa.int32()),
        ("paper_id", pa.string()),
        ("content_hash", pa.string()),
        ("request_hash", pa.string()),
        ("call_uid", pa.string()),
        ("settled_at", pa.timestamp("us")),
    ]
)


class _Shared(httpx2.BaseTransport):
    """The annotator's connections, borrowed: closing this leaves them to their owner."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        pass


class Batches:
    """The Batch API side of a run of one LLM annotator (its key: model, prompt, taxonomy).

    ``hook(step)`` is called before each step of :data:`STEPS` (tests end the process
    there, as a kill -9 would); ``sleep`` waits between polls.
    """

    def __init__(
        self,
        store: Store,
        ann: LLMAnnotator,
        run_id: str,
        *,
        hook: Callable[[str], None] | None = None,
    ) -> None:
        self.store, self.ann, self.run_id = store, ann, run_id
        self.hook = hook or (lambda step: None)
        self.report = BatchReport()
        transport = ann.transport
        # Polls and downloads are retried as any request is; a create is not (a retry
        # after an answer lost on the way could create a second batch): a create that
        # fails leaves the file uploaded, and the next attempt first looks for its batch.
        self.client = self._client(
            CallTransport(
                _Shared(transport.inner),
                max_attempts=5,
                backoff=transport.backoff,
                sleep=transport.sleep,
            )
        )
        self.once = self._client(CallTransport(_Shared(transport.inner), max_attempts=1))
        # What OpenAI's batch lines name (servers that take the format, vLLM's batch
        # runner among them, use the same), wherever the client's base URL points.
        self.endpoint = "/v1/chat/completions"

    def _client(self, transport: CallTransport) -> openai.OpenAI:
        return self.ann.client.with_options(http_client=httpx2.Client(transport=transport))

    def close(self) -> None:
        self.client.close()
        self.once.close()

    # -- the key ------------------------------------------------------------------------------
    @property
    def key(self) -> list[Any]:
        a = self.ann
        return [a.name, a.model, a.host, a.prompt_version, a.taxonomy.version]

    KEY_SQL = (
        "annotator = ? AND model = ? AND host = ? AND prompt_version = ? AND taxonomy_version = ?"
    )

    def _open_rows(self) -> list[tuple[Any, ...]]:
        return self.store.con.execute(
            "SELECT batch_uid, status, input_file_id, batch_id, created_at FROM llm_batches "
            f"WHERE collected_at IS NULL AND {self.KEY_SQL} ORDER BY created_at, batch_uid",
            self.key,
        ).fetchall()

    def _set(self, uid: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        self.store.con.execute(
            f"UPDATE llm_batches SET {cols}, updated_at = ? WHERE batch_uid = ?",
            [*values.values(), utc_now(), uid],
        )

    # -- sending --------------------------------------------------------------------------------
    def submit(self, papers: Sequence[Pending]) -> list[BatchInfo]:
        """Send these papers, in calls of ``papers_per_call`` (in order, as a live run groups
        them), in as many batches as the server's limits need."""
        size = max(1, int(getattr(self.ann, "papers_per_call", 1)))
        calls = [list(papers[i : i + size]) for i in range(0, len(papers), size)]
        bodies = request_bodies(self.ann, [[paper_input(p) for p in c] for c in calls])
        sent: list[BatchInfo] = []
        start = 0
        while start < len(calls):
            end, total = start, 0
            while end < len(calls) and end - start < MAX_REQUESTS:
                total += len(bodies[end]) + 100
                if total > MAX_FILE_BYTES and end > start:
                    break
                end += 1
            sent.append(self._submit_one(calls[start:end], bodies[start:end]))
            start = end
        self.report.submitted += sent
        return sent

    def _submit_one(self, calls: Sequence[Sequence[Pending]], bodies: Sequence[bytes]) -> BatchInfo:
        uid = "pt-" + uuid.uuid4().hex[:12]
        lines, rows = [], []
        for i, (call, body) in enumerate(zip(calls, bodies, strict=True)):
            custom_id = str(i)
            # The body as the client sends it, unparsed and unformatted, inside the line.
            lines.append(
                f'{{"custom_id": {json.dumps(custom_id)}, "method": "POST", '
                f'"url": {json.dumps(self.endpoint)}, "body": {body.decode("utf-8")}}}\n'
            )
            request_hash = hashlib.sha256(body).hexdigest()[:16]
            rows += [
                {
                    "batch_uid": uid,
                    "custom_id": custom_id,
                    "position": position,
                    "paper_id": paper.paper_id,
                    "content_hash": paper.content_hash,
                    "request_hash": request_hash,
                    "call_uid": None,
                    "settled_at": None,
                }
                for position, paper in enumerate(call)
            ]
        papers = [p for call in calls for p in call]
        now = utc_now()
        with self.store.transaction() as con:
            con.execute(
                "INSERT INTO llm_batches (batch_uid, annotator, model, host, prompt_version, "
                "taxonomy_version, base_url, endpoint, requests, papers, status, run_id, "
                "created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'prepared', ?, ?, ?)",
                [
                    uid,
                    *self.key,
                    self.ann.base_url,
                    self.endpoint,
                    len(lines),
                    len(papers),
                    self.run_id,
                    now,
                    now,
                ],
            )
            self.store.insert_arrow(
                "llm_batch_requests", pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
            )
        self.hook("upload")
        data = "".join(lines).encode("utf-8")
        try:
            file = self.once.files.create(
                file=(f"papertag-{uid}.jsonl", data, "application/jsonl"), purpose="batch"
            )
        except openai.APIError as exc:
            # Nothing is at the server: the papers go back to the queue.
            self._discard(uid)
            raise self._error("upload the batch file", exc) from None
        self.hook("uploaded")
        self._set(uid, status="uploaded", input_file_id=file.id)
        self._create(uid, file.id)
        return find_batch(self.store, uid)

    def _create(self, uid: str, file_id: str) -> None:
        self.hook("create")
        try:
            batch = self.once.batches.create(
                input_file_id=file_id,
                endpoint=self.endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata={"papertag_batch": uid},
            )
        except openai.APIError as exc:
            raise self._error("create the batch", exc) from None
        self.hook("created")
        self._update(uid, batch)

    def _discard(self, uid: str) -> None:
        with self.store.transaction() as con:
            con.execute("DELETE FROM llm_batch_requests WHERE batch_uid = ?", [uid])
            con.execute("DELETE FROM llm_batches WHERE batch_uid = ?", [uid])

    def _error(self, what: str, exc: openai.APIError) -> BatchError:
        status = getattr(exc, "status_code", None)
        detail = f"HTTP {status}: {exc.message}" if status else exc.message
        return BatchError(f"{self.ann.host}: could not {what} ({detail})")

    # -- following up -------------------------------------------------------------------------------
    def refresh(self) -> list[BatchInfo]:
        """Finish what a killed run left half done, ask the server how each open batch
        is doing, and collect those that ended. Returns the batches still open."""
        for uid, status, file_id, batch_id, created_at in self._open_rows():
            if status == "prepared":
                # Killed before the file's id was stored: if it was uploaded, it is an
                # unused file at the server (never a batch); the papers go back to the queue.
                self._discard(uid)
                continue
            if status == "uploaded":
                # Killed (or refused) between upload and create: the batch may exist.
                batch = self._find_created(uid, file_id, created_at)
                if batch is None:
                    self._create(uid, file_id)
                    continue
            else:
                batch = self._retrieve(batch_id)
            self._update(uid, batch)
            if batch.status in TERMINAL:
                self._collect(uid, batch)
        return self.waiting()

    def waiting(self) -> list[BatchInfo]:
        """This annotator's batches not yet collected, oldest first."""
        rows = self.store.con.execute(
            f"SELECT {COLUMNS} FROM llm_batches WHERE collected_at IS NULL AND {self.KEY_SQL} "
            "ORDER BY created_at, batch_uid",
            self.key,
        ).fetchall()
        self.report.waiting = [batch_info(r) for r in rows]
        return self.report.waiting

    def _find_created(self, uid: str, file_id: str, since: datetime) -> Any:
        """The batch made from this file, if a killed run created it. The server lists
        newest first: the search ends at batches made a day before this one was prepared
        (a margin for the two clocks far wider than they differ)."""
        oldest = since.replace(tzinfo=UTC).timestamp() - 86_400
        try:
            for batch in self.client.batches.list(limit=100):
                if (
                    batch.input_file_id == file_id
                    or (batch.metadata or {}).get("papertag_batch") == uid
                ):
                    return batch
                if batch.created_at < oldest:
                    break
        except openai.APIError as exc:
            raise self._error("list the server's batches", exc) from None
        return None

    def _retrieve(self, batch_id: str) -> Any:
        try:
            return self.client.batches.retrieve(batch_id)
        except openai.APIError as exc:
            raise self._error(f"read batch {batch_id}", exc) from None

    def _update(self, uid: str, batch: Any) -> None:
        counts = batch.request_counts
        errors = getattr(batch, "errors", None)
        messages = [e.message for e in (getattr(errors, "data", None) or []) if e.message]
        self._set(
            uid,
            batch_id=batch.id,
            status=batch.status,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            completed=counts.completed if counts else None,
            failed=counts.failed if counts else None,
            error="; ".join(messages)[:2000] or None,
        )

    def _download(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        try:
            raw = self.client.files.content(file_id).content
        except openai.APIError as exc:
            raise self._error(f"download file {file_id}", exc) from None
        out = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("custom_id") is not None:
                out.append(item)
        return out

    def _collect(self, uid: str, batch: Any) -> None:
        """Store the answers of an ended batch as paid calls and close it, in one
        transaction; :func:`.settle.settle` then validates and stores what they say."""
        answers = self._download(batch.output_file_id)
        self.hook("collect")
        requests: dict[str, tuple[list[str], str]] = {}
        for custom_id, paper_id, request_hash in self.store.con.execute(
            "SELECT custom_id, paper_id, request_hash FROM llm_batch_requests "
            "WHERE batch_uid = ? ORDER BY custom_id, position",
            [uid],
        ).fetchall():
            requests.setdefault(custom_id, ([], request_hash))[0].append(paper_id)
        rows, links = [], []
        report = self.report
        options = json.dumps(self.ann.options())
        started = datetime.fromtimestamp(batch.created_at, UTC).replace(tzinfo=None)
        for item in answers:
            response = item.get("response") or {}
            custom_id = str(item["custom_id"])
            if custom_id not in requests or response.get("status_code") != 200:
                continue
            paper_ids, request_hash = requests[custom_id]
            record = CallRecord(
                started_at=started,
                host=self.ann.host,
                path=f"/v1/batches/{batch.id}",
                request_hash=request_hash,
                request_body="",
                attempt=1,
                duration_ms=0.0,
                status=200,
                paper_ids=paper_ids,
            )
            summarise_response(record, json.dumps(response.get("body")).encode())
            live = estimate_cost(
                self.ann.model, record.prompt_tokens, record.completion_tokens, record.cached_tokens
            )
            record.cost_usd = None if live is None else live * BATCH_DISCOUNT
            one = paper_ids[0] if len(paper_ids) == 1 else None
            row = call_row(self.run_id, self.ann, options, one, None, record)
            # The request is the batch input file's line (the same body as a live call's).
            row["request_body"] = None
            rows.append(row)
            links.append({"custom_id": custom_id, "call_uid": record.call_uid})
            report.answers += 1
            report.prompt_tokens += record.prompt_tokens or 0
            report.completion_tokens += record.completion_tokens or 0
            report.cached_tokens += record.cached_tokens or 0
            report.cost_usd += record.cost_usd or 0.0
        report.unanswered += len(requests) - len(links)
        with self.store.transaction() as con:
            if rows:
                self.store.insert_arrow(
                    "llm_call_rows", pa.Table.from_pylist(rows, schema=call_schema())
                )
                con.register("_links", pa.Table.from_pylist(links))
                con.execute(
                    "UPDATE llm_batch_requests r SET call_uid = l.call_uid FROM _links l "
                    "WHERE r.batch_uid = ? AND r.custom_id = l.custom_id",
                    [uid],
                )
                con.unregister("_links")
            # A request without an answer is settled: its papers are pending again.
            con.execute(
                "UPDATE llm_batch_requests SET settled_at = ? WHERE batch_uid = ? "
                "AND call_uid IS NULL",
                [utc_now(), uid],
            )
            con.execute(
                "UPDATE llm_batches SET collected_at = ?, updated_at = ? WHERE batch_uid = ?",
                [utc_now(), utc_now(), uid],
            )
        self.hook("collected")
        report.collected.append(find_batch(self.store, uid))

    # -- cancelling ------------------------------------------------------------------------------
    def cancel(self, ident: str) -> BatchInfo:
        info = find_batch(self.store, ident)
        if not info.open:
            raise ConfigError(f"batch {ident} is already collected ({info.status})")
        if info.batch_id is None:
            # Never created at the server: nothing to cancel there.
            self._discard(info.batch_uid)
            return info
        try:
            batch = self.once.batches.cancel(info.batch_id)
        except openai.APIError as exc:
            raise self._error(f"cancel batch {info.batch_id}", exc) from None
        self._update(info.batch_uid, batch)
        return find_batch(self.store, info.batch_uid)
