"""``annotate --annotator llm --batch``: OpenAI's Batch API (or any server with ``/v1/files``
and ``/v1/batches``), at half the price of live calls.

A batch is the live run's first requests, byte for byte, one line per request with a
``custom_id``. Every step is written to the database before the next one starts: the
batch and its papers (``prepared``), the uploaded file's id (``uploaded``), the batch's
id (the server's status from then on). A run killed anywhere therefore finds on its
next start what the server already has: a file whose batch may or may not have been
created is looked up among the server's batches before one is created, so a batch is
never created twice; a paper in an open batch is never sent again.

Collecting a finished batch stores each answer as a paid ``llm_calls`` row (at the
batch price) in the same transaction that closes the batch. The live engine then runs
over those papers and replays the stored answers instead of sending their requests
(the same mechanism that resumes a killed live run), so every answer goes through the
live path: parse, validate, re-ask with the validation error (live), store. Lines in
the error file, and papers of an expired, failed or cancelled batch that got no
answer, are sent again: in a follow-up batch with ``--batch``, live otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import openai
import pyarrow as pa

from ..annotators import PaperInput, get_annotator
from ..annotators.llm.annotator import CHAT_PATH, LLMAnnotator
from ..annotators.llm.client import CallTransport, _summarise_response
from ..annotators.llm.prices import BATCH_DISCOUNT, estimate_cost
from ..annotators.llm.records import CallRecord, call_row
from ..db import Store, using
from ..errors import AnnotationError, ConfigError, ProviderError, ValidationFailed
from ..schema import Annotation
from .pending import Pending, paper_input, pending_papers
from .writer import Writer, call_schema

#: OpenAI's limits of one batch: 50,000 requests, an input file of 200 MB.
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 190 * 1024 * 1024
#: The server's statuses of a batch that will change no more.
TERMINAL = ("completed", "expired", "failed", "cancelled")
#: A paper that came back without an answer from this many batches is asked live.
MAX_BATCH_TRIES = 2
#: Requests settled (parsed, re-asked, written) per commit.
SETTLE_LINES = 256
#: Seconds between two polls of a batch with ``--wait``.
POLL_EVERY = 30.0

#: The steps of sending and collecting a batch, in order, as the hook is told them.
STEPS = ("upload", "uploaded", "create", "created", "collect", "collected", "settle")


class BatchError(ProviderError):
    """The Batch API refused a step (the batch's state is kept for the next run)."""


@dataclass
class BatchInfo:
    """One batch as ``papertag batches`` lists it."""

    batch_uid: str
    batch_id: str | None
    status: str
    model: str
    requests: int
    papers: int
    completed: int | None
    failed: int | None
    created_at: datetime
    collected_at: datetime | None
    error: str | None = None

    @property
    def open(self) -> bool:
        return self.collected_at is None


@dataclass
class BatchReport:
    """What the Batch API side of one run did."""

    submitted: list[BatchInfo] = field(default_factory=list)
    collected: list[BatchInfo] = field(default_factory=list)
    #: Batches still at the server (not yet finished or not yet collected).
    waiting: list[BatchInfo] = field(default_factory=list)
    #: Answers stored from collected batches; their tokens and cost (at the batch price)
    #: and those of the live re-asks of papers whose entry failed validation.
    answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    #: Requests a collected batch gave no answer for (error lines, expired, cancelled).
    unanswered: int = 0
    #: Papers not sent because --max-cost would not cover them.
    held_back: int = 0
    #: What settling the answers gave: papers annotated and failed, and live re-asks.
    annotated: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    reasks: int = 0


_COLUMNS = (
    "batch_uid, batch_id, status, model, requests, papers, completed, failed, "
    "created_at, collected_at, error"
)


def _info(row: Sequence[Any]) -> BatchInfo:
    return BatchInfo(*row)


def list_batches(store: Store, *, open_only: bool = False) -> list[BatchInfo]:
    """Every batch this database sent, newest first."""
    where = "WHERE collected_at IS NULL" if open_only else ""
    rows = store.con.execute(
        f"SELECT {_COLUMNS} FROM llm_batches {where} ORDER BY created_at DESC, batch_uid"
    ).fetchall()
    return [_info(r) for r in rows]


def find_batch(store: Store, ident: str) -> BatchInfo:
    """The batch with this id (ours or the server's); a ConfigError naming it if none."""
    row = store.con.execute(
        f"SELECT {_COLUMNS} FROM llm_batches WHERE batch_uid = ? OR batch_id = ?",
        [ident, ident],
    ).fetchone()
    if row is None:
        raise ConfigError(f"no batch {ident!r} in this database (see `papertag batches`)")
    return _info(row)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_REQUEST_SCHEMA = pa.schema(
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


class _Capture(httpx2.BaseTransport):
    """Keeps the body of each request the client builds, and sends nothing."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(request.read())
        return httpx2.Response(418, json={"error": {"message": "not sent"}}, request=request)


def request_bodies(ann: LLMAnnotator, calls: Sequence[Sequence[PaperInput]]) -> list[bytes]:
    """The body of each call's first live request (``build_request``), sent through the
    client as a live call sends it (and captured, not sent): the same bytes, so the same
    request hash as a live call of those papers."""
    capture = _Capture()
    dry = ann.client.with_options(http_client=httpx2.Client(transport=capture), max_retries=0)
    try:
        for papers in calls:
            with contextlib.suppress(openai.APIStatusError):
                dry.post(CHAT_PATH, body=ann.build_request(papers), cast_to=httpx2.Response)
    finally:
        dry.close()
    return capture.bodies


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
    def _key(self) -> list[Any]:
        a = self.ann
        return [a.name, a.model, a.host, a.prompt_version, a.taxonomy.version]

    _KEY_SQL = (
        "annotator = ? AND model = ? AND host = ? AND prompt_version = ? AND taxonomy_version = ?"
    )

    def _open_rows(self) -> list[tuple[Any, ...]]:
        return self.store.con.execute(
            "SELECT batch_uid, status, input_file_id, batch_id, created_at FROM llm_batches "
            f"WHERE collected_at IS NULL AND {self._KEY_SQL} ORDER BY created_at, batch_uid",
            self._key,
        ).fetchall()

    def _set(self, uid: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        self.store.con.execute(
            f"UPDATE llm_batches SET {cols}, updated_at = ? WHERE batch_uid = ?",
            [*values.values(), _now(), uid],
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
        now = _now()
        with self.store.transaction() as con:
            con.execute(
                "INSERT INTO llm_batches (batch_uid, annotator, model, host, prompt_version, "
                "taxonomy_version, base_url, endpoint, requests, papers, status, run_id, "
                "created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'prepared', ?, ?, ?)",
                [
                    uid,
                    *self._key,
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
                "llm_batch_requests", pa.Table.from_pylist(rows, schema=_REQUEST_SCHEMA)
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
            f"SELECT {_COLUMNS} FROM llm_batches WHERE collected_at IS NULL AND {self._KEY_SQL} "
            "ORDER BY created_at, batch_uid",
            self._key,
        ).fetchall()
        self.report.waiting = [_info(r) for r in rows]
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
        transaction; :meth:`settle` then validates and stores what they say."""
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
            _summarise_response(record, json.dumps(response.get("body")).encode())
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
                [_now(), uid],
            )
            con.execute(
                "UPDATE llm_batches SET collected_at = ?, updated_at = ? WHERE batch_uid = ?",
                [_now(), _now(), uid],
            )
        self.hook("collected")
        report.collected.append(find_batch(self.store, uid))

    # -- settling -------------------------------------------------------------------------------
    def settle(self) -> None:
        """Validate and store the answers of collected batches, as a live call's answers
        are: each paper's entry on its own (``parse_answers``), one that fails re-asked
        alone and live (``reask``, ``concurrency`` at a time), the results written by the
        live run's Writer. A request is marked settled once its papers' results are
        committed, so a run killed here parses the stored answers again next time (paying
        only for the re-asks in flight)."""
        lines = self.store.con.execute(
            "SELECT r.batch_uid, r.custom_id, c.call_uid, c.response_body, "
            "list(r.paper_id ORDER BY r.position), list(r.content_hash ORDER BY r.position) "
            "FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
            "JOIN llm_call_rows c ON c.call_uid = r.call_uid "
            "WHERE r.settled_at IS NULL AND b.annotator = ? AND b.model = ? AND b.host = ? "
            "AND b.prompt_version = ? AND b.taxonomy_version = ? "
            "GROUP BY ALL ORDER BY r.batch_uid, r.custom_id",
            self._key,
        ).fetchall()
        if not lines:
            return
        self.store.con.execute(
            "INSERT INTO annotation_runs (run_id, annotator, model, prompt_version, "
            "taxonomy_version, started_at) VALUES (?, ?, ?, ?, ?, ?)",
            [self.run_id, self.ann.name, self.ann.model, self.ann.prompt_version,
             self.ann.taxonomy.version, _now()],
        )  # fmt: skip
        writer = Writer(self.ann, self.run_id)
        workers = max(1, int(getattr(self.ann, "concurrency", 1)))
        with ThreadPoolExecutor(workers, thread_name_prefix="papertag-reask") as pool:
            for start in range(0, len(lines), SETTLE_LINES):
                chunk = lines[start : start + SETTLE_LINES]
                self._settle_lines(writer, pool, chunk)
                self.hook("settle")
                self._flush(writer, [(b, c) for b, c, *_ in chunk])
        report = self.report
        self.store.con.execute(
            "UPDATE annotation_runs SET finished_at = ?, done = ?, failed = ? WHERE run_id = ?",
            [_now(), report.annotated, report.failed, self.run_id],
        )

    def _settle_lines(
        self, writer: Writer, pool: ThreadPoolExecutor, lines: Sequence[Sequence[Any]]
    ) -> None:
        ids = [pid for line in lines for pid in line[4]]
        # The papers that still lack a result for this key (a paper whose text changed
        # since it was sent is left to be asked again).
        pending = {p.paper_id: p for p in pending_papers(self.store, self.ann, paper_ids=ids)[0]}
        now = _now()
        reasks: list[tuple[Pending, Any, str]] = []
        for _batch_uid, _custom_id, call_uid, body, paper_ids, hashes in lines:
            group = {
                pid: pending[pid]
                for pid, content_hash in zip(paper_ids, hashes, strict=True)
                if pid in pending and pending[pid].content_hash == content_hash
            }
            if not group:
                continue
            # The answer numbers the papers as the request did: parse it against all of them.
            inputs = [
                paper_input(group[pid]) if pid in group else PaperInput(pid, "", "")
                for pid in paper_ids
            ]
            for answer in self.ann.parse_answers(inputs, body):
                paper = group.get(answer.paper.paper_id)
                if paper is None:
                    continue
                error = answer.error
                if answer.annotation is not None:
                    self._result(writer, paper, answer.annotation, call_uid, [], now)
                elif (
                    len(paper_ids) > 1
                    or isinstance(error, ValidationFailed)
                    or (error is not None and error.retryable)
                ):
                    reasks.append((paper, answer, call_uid))
                elif error is not None:
                    self._result(writer, paper, error, call_uid, [], now)  # refused, cut off
        # As a live call does: each failing paper alone, its entry and the error fed back.
        for (paper, _, call_uid), (result, calls) in zip(
            reasks, pool.map(self._reask, [answer for _, answer, _ in reasks]), strict=True
        ):
            self._result(writer, paper, result, call_uid, calls, now)

    def _reask(self, answer: Any) -> tuple[Annotation | AnnotationError, list[Any]]:
        """One paper re-asked live, in a thread of the pool (its calls are the thread's)."""
        try:
            result: Annotation | AnnotationError = self.ann.reask(answer)
        except AnnotationError as exc:
            result = exc
        return result, self.ann.drain_calls()

    def _result(
        self,
        writer: Writer,
        paper: Pending,
        result: Annotation | AnnotationError,
        call_uid: str,
        calls: list[Any],
        now: datetime,
    ) -> None:
        """Queue one paper's result, and the live re-asks that gave it (if any)."""
        report = self.report
        for c in calls:
            report.reasks += 1
            report.prompt_tokens += c.prompt_tokens or 0
            report.completion_tokens += c.completion_tokens or 0
            report.cost_usd += c.cost_usd or 0.0
        annotations: dict[str, str] = {}
        if isinstance(result, Annotation):
            # Named after the answer it was validated from: the last re-ask's, else the batch's.
            made_by = calls[-1].call_uid if calls else call_uid
            annotations[paper.paper_id] = writer.add(paper, result, 0.0, now, made_by)
            report.annotated += 1
        else:
            result.paper_id = paper.paper_id
            writer.fail(paper, result, now)
            report.failed += 1
            report.failures.append((paper.paper_id, result.reason))
        if calls:
            writer.calls([paper], annotations, calls)

    def _flush(self, writer: Writer, done: list[tuple[str, str]]) -> None:
        writer.flush(self.store)
        if done:
            self.store.con.execute(
                "UPDATE llm_batch_requests r SET settled_at = $1 FROM (SELECT "
                "unnest($2::VARCHAR[]) AS b, unnest($3::VARCHAR[]) AS c) d "
                "WHERE r.batch_uid = d.b AND r.custom_id = d.c",
                [_now(), [b for b, _ in done], [c for _, c in done]],
            )
            done.clear()

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


def cancel_batch(store: Store, ident: str, **options: Any) -> BatchInfo:
    """Ask the server to cancel a batch (ours or the server's id). What it finished is
    collected by the next run; its other papers go back to the queue. ``options`` are the
    LLM annotator's client options (``api_key_env``, ...); model and server are the batch's."""
    info = find_batch(store, ident)
    row = store.con.execute(
        "SELECT base_url FROM llm_batches WHERE batch_uid = ?", [info.batch_uid]
    ).fetchone()
    ann: Any = get_annotator("llm", model=info.model, base_url=row[0] if row else None, **options)
    batches = Batches(store, ann, "cancel")
    try:
        return batches.cancel(ident)
    finally:
        batches.close()
        ann.close()


def has_open(store: Store, ann: Any) -> bool:
    """Whether this annotator has batches not yet collected."""
    return bool(
        store.scalar(
            "SELECT count(*) FROM llm_batches WHERE collected_at IS NULL AND annotator = ? "
            "AND model = ? AND prompt_version = ? AND taxonomy_version = ?",
            [ann.name, ann.model, ann.prompt_version, ann.taxonomy.version],
        )
    )


def annotate_with_batches(
    db: Store | Path,
    ann: LLMAnnotator,
    run: Callable[[list[str] | None], Any],
    *,
    submit: bool,
    wait: bool,
    pending: Callable[[Store], Sequence[Pending]],
    admit: Callable[[Sequence[Pending]], Sequence[Pending]] | None = None,
    hook: Callable[[str], None] | None = None,
    poll_every: float | None = None,
    on_batches: Callable[[list[BatchInfo]], None] | None = None,
) -> Any:
    """One ``annotate`` of an LLM annotator with batches: collect the batches that ended
    and settle their answers; run the live engine (``run(paper_ids)``; None: every
    pending paper) over what is left, or with ``submit`` only over papers that came back
    unanswered from :data:`MAX_BATCH_TRIES` batches, sending the rest (``pending(store)``,
    cut by ``admit``) in a batch; with ``wait``, again until no batch is open. Returns the
    live runs' report, the batches' answers counted in, with ``.batch`` filled in.

    Given a path, the file is open only while batches are collected, settled or sent:
    not during the live run's calls (it opens the file to store), nor while waiting for
    the server, which can take hours."""
    every = POLL_EVERY if poll_every is None else poll_every
    batches: Batches | None = None
    total: Any = None
    try:
        while True:
            with using(db) as store:
                if batches is None:
                    batches = Batches(store, ann, "batch-" + uuid.uuid4().hex[:8], hook=hook)
                batches.store = store
                waiting = batches.refresh()
                batches.settle()
                live = None if not submit else _given_up(store, ann)
            if live is None or live:
                report = run(live)
                total = report if total is None else _add(total, report)
                if report.stopped is not None:
                    break
            if submit:
                with using(db) as store:
                    batches.store = store
                    todo = list(pending(store))
                    if admit is not None:
                        allowed = list(admit(todo))
                        batches.report.held_back = len(todo) - len(allowed)
                        todo = allowed
                    if todo:
                        batches.submit(todo)
                        waiting = batches.waiting()
            if on_batches is not None:
                on_batches(waiting)
            if not wait or not waiting:
                break
            ann.throttle.sleep(every)
    finally:
        if batches is not None:
            batches.close()
    assert batches is not None  # made by the loop's first step, or raised
    if total is None:
        total = run([])
    report = batches.report
    total.batch = report
    total.done += report.annotated
    total.failed += report.failed
    total.failures += report.failures
    total.calls += report.reasks
    total.cost_usd += report.cost_usd
    total.prompt_tokens += report.prompt_tokens
    total.completion_tokens += report.completion_tokens
    total.cached_tokens += report.cached_tokens
    return total


def _add(a: Any, b: Any) -> Any:
    """Two live runs' reports as one (the first's identity, both runs' counts)."""
    for name in (
        "total",
        "done",
        "skipped",
        "failed",
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "replayed",
        "recovered",
        "throttled",
        "seconds",
    ):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    a.failures += b.failures
    a.stopped, a.left = b.stopped, b.left
    return a


def _given_up(store: Store, ann: Any) -> list[str]:
    """Papers that came back without an answer from :data:`MAX_BATCH_TRIES` batches and
    still lack an annotation: asked live even with ``--batch``."""
    rows = store.con.execute(
        "SELECT r.paper_id FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
        "WHERE b.collected_at IS NOT NULL AND r.call_uid IS NULL AND b.annotator = ? "
        "AND b.model = ? AND b.prompt_version = ? AND b.taxonomy_version = ? "
        "AND NOT EXISTS (SELECT 1 FROM annotations a JOIN papers p USING (paper_id) "
        "  WHERE a.paper_id = r.paper_id AND a.content_hash = p.content_hash "
        "  AND a.annotator = b.annotator AND a.model = b.model "
        "  AND a.prompt_version = b.prompt_version AND a.taxonomy_version = b.taxonomy_version) "
        "GROUP BY r.paper_id HAVING count(*) >= ?",
        [ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, MAX_BATCH_TRIES],
    ).fetchall()
    return [r[0] for r in rows]


__all__ = [
    "STEPS",
    "BatchError",
    "BatchInfo",
    "BatchReport",
    "Batches",
    "find_batch",
    "list_batches",
    "request_bodies",
]
