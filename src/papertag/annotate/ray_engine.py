"""``annotate --engine ray``: the LLM annotator on a Ray cluster, results back in DuckDB.

DuckDB has one writing process, so the cluster never opens the database:

1. this process (Ray's *driver*) writes the papers to annotate, those :func:`pending_papers`
   finds for the annotator's key, to Parquet shards in a work directory beside the
   database (``<db>.ray/in/``);
2. a Ray Data pipeline hands each shard to an actor of a pool. An actor holds one
   :class:`LLMAnnotator`, the local engine's own: the same request, schema, validation
   and evidence check, the same retries and call records. It builds the shard's rows
   for ``annotations``, ``annotation_labels``, ``annotation_failures`` and ``llm_calls``
   with the local engine's row code (:class:`Rows`), so keys and provenance are the same;
   with ``vllm_model``, vLLM engines in the workers answer instead (:mod:`.ray_vllm`);
3. the rows come back through Ray's object store (no file system shared with the
   workers is needed), and this process writes each finished shard to
   ``<db>.ray/out/<shard>/<table>.parquet``: a directory renamed into place, so a shard
   is there whole or not at all;
4. it loads the shard into DuckDB in one transaction, then deletes its files. The file is
   open only for that (as the local engine's is only to store a batch), so other commands
   can use the database during the run; a shard that finds it in use waits on disk for
   the next one, or for the end of the run (then for the next run). One run per
   database at a time, whatever the engine (:mod:`.lock`).

A killed driver loses only the shards in flight. The next run first loads the finished
shards left in ``out/``, exactly once (a shard whose rows are already in the database
is only deleted), then starts again on the papers still pending.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..annotators import DEFAULT_CONCURRENCY, AnnotatorInfo
from ..annotators.llm.annotator import LLMAnnotator
from ..annotators.llm.config import LLMConfig
from ..annotators.llm.prices import price_for
from ..db import Store, default_db_path, using
from ..errors import ConfigError, DatabaseBusy, PapertagError, ProviderError
from .engine import FINAL_WAIT, TURN_WAIT
from .lock import RunLock
from .pending import paper_input, pending_papers
from .recovery import save_template
from .report import AnnotateReport, finish_run, start_run
from .shards import (
    DEFAULT_ACTORS,
    DEFAULT_SHARD_SIZE,
    OUTPUT_SCHEMA,
    Shard,
    WorkDir,
    from_ipc,
    is_loaded,
    output_row,
    read_output,
    settle,
    shard_papers,
)
from .work import THREADS_PER_CALL, calls_of, work
from .writer import TABLES, Rows, write_tables

#: CPUs Ray reserves for an actor: most of its time is spent waiting for answers.
ACTOR_CPUS = 0.5
#: Shards an actor works on at once (sharing its annotator's throttle), so that its
#: requests in flight stay at its concurrency while one shard's last papers finish.
SHARDS_PER_ACTOR = 2

#: The price table's variable (see :func:`price_for`), handed to the workers.
PRICES_ENV = "PAPERTAG_PRICES"

INSTALL_HINT = "--engine ray needs Ray: pip install 'papertag[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, with ``ray.data``; a one-line ConfigError saying how to install it."""
    try:
        import ray.data

        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


class ShardAnnotator:
    """A Ray actor: one LLMAnnotator, its papers ``concurrency`` requests at a time."""

    def __init__(self, options: dict[str, Any], run_id: str) -> None:
        self.ann = LLMAnnotator(**options)
        self.run_id = run_id
        self.pool = ThreadPoolExecutor(
            THREADS_PER_CALL * int(self.ann.concurrency), thread_name_prefix="papertag-ray"
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for shard, papers in shard_papers(batch):
            rows = Rows(self.ann, self.run_id)
            fatal = None
            groups = calls_of(papers, self.ann.papers_per_call)
            results = self.pool.map(lambda g: work(self.ann, [paper_input(p) for p in g]), groups)
            for group, done in zip(groups, results, strict=True):
                if (error := done.outcomes[0].fatal) is not None:
                    if fatal is None:
                        fatal = _fatal_text(error)
                        # The run stops: the shard's other papers need not wait their turn.
                        self.ann.cancel()
                    continue
                settle(rows, group, done)
            out.append(output_row(shard, len(papers), None if fatal else rows, fatal))
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def _fatal_text(exc: BaseException) -> str:
    if isinstance(exc, PapertagError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the driver


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray runtime;
    True when this call did (the caller then shuts it down). A runtime already started in
    this process (a notebook's ``ray.init()``) is used as it is."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.ERROR}
    # Workers' own log lines would land in the middle of the progress bar.
    kwargs["log_to_driver"] = False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return True


def quiet_data(ray: Any) -> None:
    """Ray Data's own progress bars and per-run log lines off: the command draws its own."""
    with warnings.catch_warnings():
        # Ray Data 2.60's context warns, as it is made, of a deprecated setting that Ray
        # itself sets (use_push_based_shuffle): nothing of ours to change.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def account(report: AnnotateReport, tables: dict[str, pa.Table]) -> None:
    """Add a loaded shard's results and calls to the report."""
    if (anns := tables.get("annotations")) is not None:
        report.done += anns.num_rows
    if (fails := tables.get("annotation_failures")) is not None:
        report.failed += fails.num_rows
        report.failures += zip(
            fails.column("paper_id").to_pylist(), fails.column("reason").to_pylist(), strict=True
        )
    if (calls := tables.get("llm_call_rows")) is not None and calls.num_rows:
        report.calls += calls.num_rows
        report.prompt_tokens += int(pc.sum(calls.column("prompt_tokens")).as_py() or 0)
        report.completion_tokens += int(pc.sum(calls.column("completion_tokens")).as_py() or 0)
        report.cached_tokens += int(pc.sum(calls.column("cached_tokens")).as_py() or 0)
        report.cost_usd += float(pc.sum(calls.column("cost_usd")).as_py() or 0.0)
        report.throttled += int(pc.sum(pc.equal(calls.column("status"), 429)).as_py() or 0)


def annotate_on_ray(
    db: Store | str | Path | None = None,
    *,
    address: str | None = None,
    actors: int = DEFAULT_ACTORS,
    shard_size: int = DEFAULT_SHARD_SIZE,
    vllm_model: str | None = None,
    vllm_config: str | Path | dict[str, Any] | None = None,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    paper_ids: Iterable[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[AnnotateReport], None] | None = None,
    **options: Any,
) -> AnnotateReport:
    """``annotate_papers(db, "llm", ...)`` on a Ray cluster (``address``, else
    $RAY_ADDRESS, else a local Ray runtime), with the same keys and provenance.

    ``options`` are the LLM annotator's (``model``, ``base_url``, ``concurrency``, ...);
    ``concurrency``, ``rpm`` and ``tpm`` are totals, shared among the ``actors``. With
    ``vllm_model`` (a model directory or name vLLM loads), vLLM engines in the Ray
    workers answer instead of a server; ``vllm_config`` (a YAML file or a dict) holds the
    arguments of ``ray.data.llm.vLLMEngineProcessorConfig`` (replicas, batch size,
    engine arguments). Run it again after a crash: finished shards are loaded, not redone.
    """
    if limit is not None and limit < 0:
        raise ConfigError("--limit must be 0 or more")
    if actors < 1:
        raise ConfigError("--ray-actors must be at least 1")
    if shard_size < 1:
        raise ConfigError("--shard-size must be at least 1")
    if options.get("max_cost") is not None:
        raise ConfigError("--max-cost is not available with --engine ray; use --limit")
    options.pop("max_cost", None)
    vllm = None
    if vllm_model is not None:
        from . import ray_vllm

        vllm = ray_vllm.VLLMSettings.build(vllm_model, vllm_config, options)
        config: AnnotatorInfo = vllm.config
    else:
        config = LLMConfig.from_options(options)
    ray = import_ray()
    path = db.path if isinstance(db, Store) else Path(db) if db is not None else default_db_path()
    if str(path) == ":memory:":
        raise ConfigError("--engine ray needs a database file (its shards are kept beside it)")
    # One run per database, as with the local engine; given a path, the file is opened for
    # each step that needs it, so other commands can use the database during the run.
    lock = RunLock(path)
    lock.acquire()
    try:
        return _RayRun(db if isinstance(db, Store) else path, config, on_start, on_progress).run(
            ray,
            options,
            vllm,
            address=address,
            actors=actors,
            shard_size=shard_size,
            limit=limit,
            force=force,
            retry_failed=retry_failed,
            paper_ids=list(paper_ids) if paper_ids is not None else None,
        )
    finally:
        lock.release()


class _RayRun:
    def __init__(
        self,
        db: Store | Path,
        config: AnnotatorInfo,
        on_start: Callable[[int], None] | None,
        on_progress: Callable[[AnnotateReport], None] | None,
    ) -> None:
        #: An open Store (the caller's, held throughout), or the path of a file opened for
        #: each step that needs it.
        self.db, self.config = db, config
        self.on_start, self.on_progress = on_start, on_progress
        self.run_id = uuid.uuid4().hex[:12]
        self.report = AnnotateReport(
            config.name, config.model, config.prompt_version, config.taxonomy.version, self.run_id
        )
        self.report.cost_known = price_for(config.model) is not None
        self.work = WorkDir(db.path if isinstance(db, Store) else db)

    def run(
        self,
        ray: Any,
        options: dict[str, Any],
        vllm: Any,
        *,
        address: str | None,
        actors: int,
        shard_size: int,
        limit: int | None,
        force: bool,
        retry_failed: bool,
        paper_ids: list[str] | None,
    ) -> AnnotateReport:
        report = self.report
        started = time.perf_counter()
        with using(self.db) as store:
            # What a killed run finished: stored before anything else, so it is not pending.
            recovered = self.load_finished(store)
            start_run(store, self.config, self.run_id)
            try:
                todo, report.skipped = pending_papers(
                    store,
                    self.config,
                    force=force,
                    retry_failed=retry_failed,
                    limit=limit,
                    paper_ids=paper_ids,
                )
                if vllm is None:
                    # The template every call row of the workers refers to (the same
                    # annotator, so the same template); building it sends nothing.
                    probe = LLMAnnotator(**options)
                    try:
                        save_template(store, probe.transport.template)
                    finally:
                        probe.close()
            except BaseException:
                finish_run(store, report)
                raise
        try:
            report.skipped -= recovered
            report.total = len(todo) + recovered
            shards = self.work.write_inputs(todo, shard_size, self.run_id)
            if self.on_start:
                self.on_start(report.total)
            if self.on_progress and recovered:
                self.on_progress(report)
            if shards:
                self.pipeline(ray, shards, options, vllm, address=address, actors=actors)
        except KeyboardInterrupt:
            report.stopped = "interrupted"
        finally:
            report.seconds = time.perf_counter() - started
            self.finish()
        return report

    def finish(self) -> None:
        """Load the shards still waiting for the database and record the run's counts; a
        file still in use after :data:`FINAL_WAIT` leaves them on disk for the next run."""
        report = self.report
        try:
            with using(self.db, wait=FINAL_WAIT) as store:
                self.load_finished(store)
                report.left = report.total - report.done - report.failed
                finish_run(store, report)
        except DatabaseBusy:
            if isinstance(self.db, Store):
                raise
            report.unstored = sum(papers_in(read_output(p)) for p in self.work.finished())
            report.left = report.total - report.done - report.failed - report.unstored
            return
        if report.left == 0 and report.stopped is None:
            self.work.remove_if_empty()

    def load_finished(self, store: Store) -> int:
        """Load the finished shards not yet in the database (a killed run's, or this run's
        that found the file in use); returns their papers."""
        papers = 0
        for path in self.work.finished():
            tables = read_output(path)
            if not is_loaded(store, tables):
                write_tables(store, tables)
                account(self.report, tables)
                papers += papers_in(tables)
            self.work.done_with(path.name)
        return papers

    def pipeline(
        self,
        ray: Any,
        shards: list[Shard],
        options: dict[str, Any],
        vllm: Any,
        *,
        address: str | None,
        actors: int,
    ) -> None:
        # No actor would have a request in flight of its own.
        actors = max(1, min(actors, concurrency(options), len(shards)))
        started_ray = connect(ray, address)
        try:
            quiet_data(ray)
            # A block per shard: an actor's call is one shard; blocks travel through the
            # object store, so workers on other machines need no shared file system.
            ds = ray.data.from_arrow([self.work.read_input(s) for s in shards])
            if vllm is not None:
                ds = vllm.pipeline(ray, ds, self.run_id)
            else:
                ds = ds.map_batches(
                    ShardAnnotator,
                    fn_constructor_kwargs={
                        "options": actor_options(options, actors),
                        "run_id": self.run_id,
                    },
                    batch_size=None,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(
                        size=actors,
                        max_concurrent_calls_per_actor=SHARDS_PER_ACTOR,
                        # No shard queued behind a slow one: an actor is sent what it runs.
                        max_tasks_in_flight_per_actor=SHARDS_PER_ACTOR,
                        enable_true_multi_threading=True,
                    ),
                    num_cpus=ACTOR_CPUS,
                    runtime_env=worker_env(),
                )
            self.collect(ds, {s.shard_id: s.papers for s in shards})
        finally:
            if started_ray:
                ray.shutdown()

    def collect(self, ds: Any, expected: dict[str, int]) -> None:
        """Write and load each shard as soon as all its papers are back."""
        pieces: dict[str, list[dict[str, Any]]] = {}
        got: dict[str, int] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for piece in batch.to_pylist():
                if piece["fatal"]:
                    raise ProviderError(piece["fatal"])
                shard = piece["shard"]
                pieces.setdefault(shard, []).append(piece)
                got[shard] = got.get(shard, 0) + piece["papers"]
                if got[shard] >= expected[shard]:
                    self.finish_shard(shard, pieces.pop(shard))

    def finish_shard(self, shard: str, pieces: list[dict[str, Any]]) -> None:
        tables = {}
        for name in TABLES:
            parts = [from_ipc(p[name]) for p in pieces if p[name] is not None]
            if parts:
                tables[name] = pa.concat_tables(parts, promote_options="permissive")
        # Loaded from the file written (what is stored is what the shard holds), now or,
        # while another process has the database, with the next shard or at the end.
        self.work.write_output(shard, tables)
        try:
            with using(self.db, wait=TURN_WAIT) as store:
                self.load_finished(store)
        except DatabaseBusy:
            if isinstance(self.db, Store):
                raise
        if self.on_progress:
            self.on_progress(self.report)


def papers_in(tables: dict[str, pa.Table]) -> int:
    """Papers a shard's output holds: each has an annotation or a failure."""
    return sum(
        tables[name].num_rows for name in ("annotations", "annotation_failures") if name in tables
    )


def actor_options(options: dict[str, Any], actors: int) -> dict[str, Any]:
    """Each actor's share of the run's limits (concurrency, rpm, tpm are totals), and the
    API key read here: workers on other machines do not have this environment."""
    share = dict(options)
    share["concurrency"] = max(1, concurrency(options) // actors)
    for name in ("rpm", "tpm"):
        if options.get(name) is not None:
            share[name] = float(options[name]) / actors
    key_env = str(options.get("api_key_env") or "OPENAI_API_KEY")
    if share.get("api_key") is None and os.environ.get(key_env):
        share["api_key"] = os.environ[key_env]
    return share


def worker_env() -> dict[str, Any] | None:
    """This process's price table for the workers (on other machines, or started before
    it was set), so that calls cost what the local engine would say."""
    prices = os.environ.get(PRICES_ENV)
    return {"env_vars": {PRICES_ENV: prices}} if prices else None


def concurrency(options: dict[str, Any]) -> int:
    return int(options.get("concurrency") or DEFAULT_CONCURRENCY)
