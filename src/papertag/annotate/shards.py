"""The Ray engine's shards: the files of its work directory beside the database, and the
rows a worker sends back for each shard (:mod:`.ray_engine`, :mod:`.ray_vllm`)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..db import Store
from .pending import Pending
from .work import Work
from .writer import TABLES, Rows

#: Papers per shard: the unit of work of an actor, of the files, and of what a killed
#: driver loses (the shards in flight).
DEFAULT_SHARD_SIZE = 128
#: Actors (each one LLMAnnotator) unless told otherwise; --concurrency is shared among them.
DEFAULT_ACTORS = 2


@dataclass(frozen=True)
class Shard:
    shard_id: str
    papers: int


class WorkDir:
    """``<db>.ray/``: input shards (``in/<id>.parquet``) and finished ones (``out/<id>/``)."""

    def __init__(self, db_path: Path) -> None:
        self.root = db_path.with_name(db_path.name + ".ray")
        self.inputs = self.root / "in"
        self.outputs = self.root / "out"

    def finished(self) -> list[Path]:
        """Shards written whole by an earlier run and maybe not loaded yet."""
        if not self.outputs.is_dir():
            return []
        return sorted(p for p in self.outputs.iterdir() if p.is_dir() and p.suffix != ".tmp")

    def write_inputs(self, todo: Sequence[Pending], shard_size: int, run_id: str) -> list[Shard]:
        """The papers to annotate, ``shard_size`` a file (what an earlier run left is
        replaced: its finished shards are loaded first, the rest is pending again)."""
        shutil.rmtree(self.inputs, ignore_errors=True)
        if self.outputs.is_dir():
            for tmp in self.outputs.glob("*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
        self.inputs.mkdir(parents=True, exist_ok=True)
        shards = []
        for n, start in enumerate(range(0, len(todo), shard_size)):
            part = todo[start : start + shard_size]
            shard = Shard(f"{run_id}-{n:06d}", len(part))
            table = pa.table(
                {
                    "shard": [shard.shard_id] * len(part),
                    "paper_id": [p.paper_id for p in part],
                    "title": [p.title for p in part],
                    "abstract": [p.abstract for p in part],
                    "content_hash": [p.content_hash for p in part],
                }
            )
            pq.write_table(table, self.inputs / f"{shard.shard_id}.parquet")
            shards.append(shard)
        return shards

    def read_input(self, shard: Shard) -> pa.Table:
        return pq.read_table(self.inputs / f"{shard.shard_id}.parquet")

    def write_output(self, shard_id: str, tables: dict[str, pa.Table]) -> Path:
        """A finished shard's rows, one Parquet file per table, renamed into place whole."""
        final = self.outputs / shard_id
        tmp = self.outputs / f"{shard_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        tmp.rename(final)
        return final

    def done_with(self, shard_id: str) -> None:
        (self.inputs / f"{shard_id}.parquet").unlink(missing_ok=True)
        shutil.rmtree(self.outputs / shard_id, ignore_errors=True)

    def remove_if_empty(self) -> None:
        """Nothing left to load or to do: the directory goes."""
        if self.root.is_dir() and not self.finished() and not any(self.inputs.glob("*.parquet")):
            shutil.rmtree(self.root, ignore_errors=True)


def read_output(path: Path) -> dict[str, pa.Table]:
    return {
        name: pq.read_table(path / f"{name}.parquet")
        for name in TABLES
        if (path / f"{name}.parquet").exists()
    }


def is_loaded(store: Store, tables: dict[str, pa.Table]) -> bool:
    """Whether a shard's rows are in the database already (its load committed, then the
    run died before deleting its files). A shard loads in one transaction, so one row
    tells: a call, else an annotation, else a failure of the same run."""
    if (calls := tables.get("llm_call_rows")) is not None and calls.num_rows:
        uid = calls.column("call_uid")[0].as_py()
        return bool(store.scalar("SELECT count(*) FROM llm_call_rows WHERE call_uid = ?", [uid]))
    if (anns := tables.get("annotations")) is not None and anns.num_rows:
        row = anns.slice(0, 1).to_pylist()[0]
        return bool(
            store.scalar(
                "SELECT count(*) FROM annotations WHERE annotation_id = ? AND run_id = ?",
                [row["annotation_id"], row["run_id"]],
            )
        )
    if (fails := tables.get("annotation_failures")) is not None and fails.num_rows:
        row = fails.slice(0, 1).to_pylist()[0]
        return bool(
            store.scalar(
                "SELECT count(*) FROM annotation_failures WHERE run_id = ? AND paper_id = ?",
                [row["run_id"], row["paper_id"]],
            )
        )
    return True  # nothing to load


#: The pipeline's output: a piece of a shard (its papers counted), its rows for each table
#: as an Arrow IPC stream, or the error that must stop the run.
OUTPUT_SCHEMA = pa.schema(
    [("shard", pa.string()), ("papers", pa.int64()), ("fatal", pa.string())]
    + [(name, pa.binary()) for name in TABLES]
)


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def output_row(
    shard: str, papers: int, rows: Rows | None, fatal: str | None = None
) -> dict[str, Any]:
    tables = rows.tables() if rows is not None else {}
    return {
        "shard": shard,
        "papers": papers,
        "fatal": fatal,
        **{name: _ipc(tables[name]) if name in tables else None for name in TABLES},
    }


def shard_papers(batch: pa.Table) -> Iterator[tuple[str, list[Pending]]]:
    """The papers of each shard in a batch (a batch is one shard unless Ray merged blocks)."""
    by_shard: dict[str, list[Pending]] = {}
    for r in batch.to_pylist():
        by_shard.setdefault(r["shard"], []).append(
            Pending(r["paper_id"], r["title"], r["abstract"], r["content_hash"])
        )
    yield from by_shard.items()


def settle(rows: Rows, group: Sequence[Pending], done: Work) -> None:
    """One call's papers as rows, as the local engine writes them: each annotation names
    the last exchange that carried its paper (a fatal error is the caller's to raise)."""
    made_by: dict[str, str] = {}
    for c in done.calls:
        for paper_id in c.paper_ids or [group[0].paper_id]:
            made_by[paper_id] = c.call_uid
    annotations: dict[str, str] = {}
    for paper, out in zip(group, done.outcomes, strict=True):
        if out.error is not None:
            rows.fail(paper, out.error, out.started)
        elif out.result is not None:
            annotations[paper.paper_id] = rows.add(
                paper, out.result, out.duration_ms, out.started, made_by.get(paper.paper_id)
            )
    rows.calls(group, annotations, done.calls)
