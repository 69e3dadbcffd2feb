"""The fault server with OpenAI's Batch API: ``/v1/files`` and ``/v1/batches``.

A batch moves through validating -> in_progress -> completed (or expired, failed,
cancelled) when the test says so (:meth:`BatchServer.advance`, :meth:`BatchServer.finish`,
:meth:`BatchServer.fail`), never by wall time; with ``auto=True`` each poll of a batch
moves it one step on, so a run that waits with ``--wait`` finishes after a few polls.
Each line of a batch is answered as the fault server answers a live request (its
``route``, ``replies`` or a valid annotation), so a fault table covers both. A line
answered with a status other than 200 goes to the error file, as OpenAI's does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .fault_server import FaultServer, Reply, papers_of

TERMINAL = ("completed", "expired", "failed", "cancelled")


def _not_found(what: str) -> Reply:
    return Reply(404, {"error": {"message": f"No such {what}", "type": "invalid_request_error"}})


class BatchServer(FaultServer):
    def __init__(self, replies: list[Reply] | None = None, *, auto: bool = False, **options: Any):
        super().__init__(replies, **options)
        self.auto = auto
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        #: How many created batches carried each paper (by title): above 1 is a paper sent twice.
        self.batched: Counter[str] = Counter()
        #: Requests to the Batch API endpoints, as "METHOD /path".
        self.batch_calls: list[str] = []
        #: Make the next requests of a kind fail: {"POST /v1/batches": Reply(500, ...)}.
        self.faults: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._ids = 0

    # -- what a test does --------------------------------------------------------------------
    def advance(self, batch_id: str | None = None) -> None:
        """One step on for a batch (each open batch without an id): validating ->
        in_progress -> completed."""
        with self._lock:
            for b in self._open(batch_id):
                self._step(b)

    def finish(
        self, batch_id: str | None = None, status: str = "completed", *, done: int | None = None
    ) -> None:
        """End a batch as ``status`` (completed, expired, cancelled) with its first ``done``
        lines answered (all of them by default; for a completed batch, always all)."""
        with self._lock:
            for b in self._open(batch_id):
                self._end(b, status, done)

    def fail(self, batch_id: str | None = None, message: str = "invalid input file") -> None:
        """The batch fails validation: no line is run."""
        with self._lock:
            for b in self._open(batch_id):
                b["status"] = "failed"
                b["failed_at"] = int(time.time())
                b["errors"] = {
                    "object": "list",
                    "data": [{"code": "invalid_request", "message": message, "line": 1}],
                }

    def lines(self, batch_id: str) -> list[dict[str, Any]]:
        """The request lines of a batch's input file."""
        raw = self.content[self.batches[batch_id]["input_file_id"]]
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]

    # -- the endpoints ---------------------------------------------------------------------------
    def endpoint(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        url = urlsplit(path)
        parts = url.path.strip("/").split("/")
        if parts[:2] not in (["v1", "files"], ["v1", "batches"]):
            return None
        key = f"{method} /{'/'.join(parts[:2])}"
        self.batch_calls.append(f"{method} {url.path}")
        with self._lock:
            if self.faults.get(key):
                return self.faults[key].pop(0)
            if parts[1] == "files":
                return self._files(method, parts[2:], headers, raw)
            return self._batches(method, parts[2:], raw, parse_qs(url.query))

    def _files(self, method: str, rest: list[str], headers: dict[str, str], raw: bytes) -> Reply:
        if method == "POST" and not rest:
            form = _multipart(headers.get("content-type", ""), raw)
            if form.get("purpose", (None, b""))[1] != b"batch" or "file" not in form:
                return Reply(400, {"error": {"message": "purpose must be batch, with a file"}})
            name, data = form["file"]
            return Reply(body=self._new_file(name or "upload.jsonl", data, "batch"))
        if not rest or rest[0] not in self.files:
            return _not_found("file")
        if method == "GET" and rest[1:] == ["content"]:
            return Reply(
                body=self.content[rest[0]], headers={"content-type": "application/octet-stream"}
            )
        if method == "GET" and not rest[1:]:
            return Reply(body=self.files[rest[0]])
        return Reply(405, {"error": {"message": "not allowed"}})

    def _batches(
        self, method: str, rest: list[str], raw: bytes, query: dict[str, list[str]]
    ) -> Reply:
        if method == "POST" and not rest:
            body = json.loads(raw)
            file_id = body.get("input_file_id")
            if file_id not in self.files:
                return _not_found("file")
            return Reply(body=self._new_batch(file_id, body))
        if method == "GET" and not rest:
            listed = sorted(self.batches.values(), key=lambda b: b["_seq"], reverse=True)
            if after := query.get("after", [None])[0]:
                seqs = [b["id"] for b in listed]
                listed = listed[seqs.index(after) + 1 :] if after in seqs else []
            limit = int(query.get("limit", ["20"])[0])
            page = [_public(b) for b in listed[:limit]]
            return Reply(
                body={
                    "object": "list",
                    "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(listed) > limit,
                }
            )
        if not rest or rest[0] not in self.batches:
            return _not_found("batch")
        b = self.batches[rest[0]]
        if method == "GET" and not rest[1:]:
            if self.auto:
                self._step(b)
            return Reply(body=_public(b))
        if method == "POST" and rest[1:] == ["cancel"]:
            if b["status"] not in TERMINAL:
                b["status"] = "cancelling"
                b["cancelling_at"] = int(time.time())
                if self.auto:
                    self._end(b, "cancelled", 0)
            return Reply(body=_public(b))
        return Reply(405, {"error": {"message": "not allowed"}})

    # -- state -------------------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-test{self._ids:04d}"

    def _new_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        fid = self._id("file")
        self.content[fid] = data
        self.files[fid] = {
            "object": "file",
            "id": fid,
            "purpose": purpose,
            "filename": name,
            "bytes": len(data),
            "created_at": int(time.time()),
            "expires_at": None,
            "status": "processed",
            "status_details": None,
        }
        return self.files[fid]

    def _new_batch(self, file_id: str, body: dict[str, Any]) -> dict[str, Any]:
        bid = self._id("batch")
        now = int(time.time())
        self.batches[bid] = b = {
            "id": bid,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "errors": None,
            "input_file_id": file_id,
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86_400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "_seq": self._ids,
        }
        for line in self.lines(bid):
            for title in _titles(line.get("body") or {}):
                self.batched[title] += 1
        return b

    def _open(self, batch_id: str | None) -> list[dict[str, Any]]:
        if batch_id is not None:
            return [self.batches[batch_id]]
        return [b for b in self.batches.values() if b["status"] not in TERMINAL]

    def _step(self, b: dict[str, Any]) -> None:
        if b["status"] == "validating":
            b["status"] = "in_progress"
            b["in_progress_at"] = int(time.time())
            b["request_counts"]["total"] = len(self.lines(b["id"]))
        elif b["status"] == "in_progress":
            self._end(b, "completed", None)
        elif b["status"] == "cancelling":
            self._end(b, "cancelled", 0)

    def _end(self, b: dict[str, Any], status: str, done: int | None) -> None:
        lines = self.lines(b["id"])
        done = len(lines) if done is None or status == "completed" else done
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            if i >= done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                message = "This request could not be executed before the batch " + (
                    "expired." if status == "expired" else "was cancelled."
                )
                errors.append(_line(line, None, {"code": code, "message": message}))
                continue
            reply = self._answer(line["body"])
            body = reply.body if isinstance(reply.body, dict) else {}
            response = {"status_code": reply.status, "request_id": f"req-{i}", "body": body}
            (output if reply.status == 200 else errors).append(_line(line, response, None))
        now = int(time.time())
        if output:
            b["output_file_id"] = self._new_file(
                "batch_output.jsonl", _jsonl(output), "batch_output"
            )["id"]
        if errors:
            b["error_file_id"] = self._new_file(
                "batch_errors.jsonl", _jsonl(errors), "batch_output"
            )["id"]
        b["status"] = status
        b[f"{status}_at"] = now
        b["request_counts"] = {
            "total": len(lines),
            "completed": len(output),
            "failed": len(errors),
        }


def _line(
    request: dict[str, Any], response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{request['custom_id']}",
        "custom_id": request["custom_id"],
        "response": response,
        "error": error,
    }


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _titles(body: dict[str, Any]) -> list[str]:
    """The titles of the papers a request asks about (one, or several in one call)."""
    return [p["title"] for p in papers_of(body) if p.get("title")]


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


@contextmanager
def batch_server(replies: list[Reply] | None = None, **options: Any) -> Iterator[BatchServer]:
    with BatchServer(replies, **options).start() as srv:
        yield srv
