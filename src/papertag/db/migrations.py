"""The schema as an append-only list of named migrations, recorded in ``_migrations``.

A database written by an older papertag opens and upgrades: :class:`~papertag.db.Store`
applies, in order, the migrations the file has not seen. Never edit or rename a shipped
migration; add a new one at the end (a repeated name is refused at import).
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from ..errors import StoreError
from ..schema import ACCEPT_THRESHOLD

Migration = Callable[["duckdb.DuckDBPyConnection"], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Append ``fn`` to :data:`MIGRATIONS` under its name, the key recorded in each file."""
    if any(name == fn.__name__ for name, _ in MIGRATIONS):
        # A second function of the same name would never run on a file that has the first.
        raise RuntimeError(f"migration {fn.__name__!r} is defined twice")
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_papers_and_digests(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE papers (
            paper_id VARCHAR PRIMARY KEY,
            title VARCHAR NOT NULL,
            abstract VARCHAR NOT NULL,
            arxiv_id VARCHAR,
            title_key VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            url VARCHAR,
            published_at DATE,
            upvotes INTEGER,
            keywords VARCHAR[],
            first_seen TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        );
        -- Every text a paper has had; annotations on an older hash are stale.
        CREATE TABLE paper_versions (
            paper_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            title VARCHAR NOT NULL,
            abstract VARCHAR NOT NULL,
            seen_at TIMESTAMP NOT NULL
        );
        CREATE TABLE digests (
            digest_id VARCHAR PRIMARY KEY,
            source VARCHAR NOT NULL,
            format VARCHAR NOT NULL,
            digest_date DATE,
            sha256 VARCHAR NOT NULL,
            entries INTEGER NOT NULL,
            ingested_at TIMESTAMP NOT NULL
        );
        CREATE TABLE digest_papers (
            digest_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            paper_id VARCHAR NOT NULL,
            listed_on DATE,
            PRIMARY KEY (digest_id, position)
        );
        """
    )


@migration
def m002_annotations(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE annotation_runs (
            run_id VARCHAR PRIMARY KEY,
            annotator VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            prompt_version VARCHAR NOT NULL,
            taxonomy_version VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            done INTEGER DEFAULT 0,
            skipped INTEGER DEFAULT 0,
            failed INTEGER DEFAULT 0
        );
        CREATE TABLE annotations (
            annotation_id VARCHAR PRIMARY KEY,
            paper_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            annotator VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            prompt_version VARCHAR NOT NULL,
            taxonomy_version VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            duration_ms DOUBLE
        );
        -- kind = 'label' (assigned) or 'candidate' (runner-up offered for review).
        CREATE TABLE annotation_labels (
            annotation_id VARCHAR NOT NULL,
            field VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            rank INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            confidence DOUBLE NOT NULL,
            evidence VARCHAR NOT NULL,
            note VARCHAR
        );
        CREATE TABLE annotation_failures (
            paper_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            annotator VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            prompt_version VARCHAR NOT NULL,
            taxonomy_version VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            last_completion VARCHAR,
            attempts INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        -- The newest run of each (annotator, model) defines its current prompt/taxonomy versions.
        CREATE VIEW current_versions AS
        SELECT annotator, model,
               arg_max(prompt_version, started_at) AS prompt_version,
               arg_max(taxonomy_version, started_at) AS taxonomy_version
        FROM annotation_runs GROUP BY annotator, model;
        CREATE VIEW annotation_status AS
        SELECT a.*,
               (a.content_hash = p.content_hash
                AND a.prompt_version = v.prompt_version
                AND a.taxonomy_version = v.taxonomy_version) AS current
        FROM annotations a
        JOIN papers p USING (paper_id)
        JOIN current_versions v USING (annotator, model);
        CREATE VIEW labels AS
        SELECT s.paper_id, l.field, l.label, l.confidence, l.evidence, l.note, l.rank,
               s.annotator, s.model, s.prompt_version, s.taxonomy_version,
               s.annotation_id, s.created_at, s.current
        FROM annotation_labels l JOIN annotation_status s USING (annotation_id)
        WHERE l.kind = 'label';
        CREATE VIEW candidates AS
        SELECT s.paper_id, l.field, l.label, l.confidence, l.evidence, l.note, l.rank,
               s.annotator, s.model, s.prompt_version, s.taxonomy_version,
               s.annotation_id, s.created_at, s.current
        FROM annotation_labels l JOIN annotation_status s USING (annotation_id)
        WHERE l.kind = 'candidate';
        """
    )


@migration
def m003_llm_calls(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE SEQUENCE llm_call_seq;
        -- One row per HTTP exchange with a model server (re-asks and transport retries included).
        CREATE TABLE llm_calls (
            call_id BIGINT PRIMARY KEY DEFAULT nextval('llm_call_seq'),
            run_id VARCHAR NOT NULL,
            paper_id VARCHAR,
            annotation_id VARCHAR,
            annotator VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            host VARCHAR NOT NULL,
            path VARCHAR,
            prompt_version VARCHAR NOT NULL,
            taxonomy_version VARCHAR NOT NULL,
            options JSON,
            request_hash VARCHAR NOT NULL,
            request_body VARCHAR,
            status INTEGER,
            response_body VARCHAR,
            finish_reason VARCHAR,
            refusal VARCHAR,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            duration_ms DOUBLE,
            attempt INTEGER NOT NULL,
            error VARCHAR,
            started_at TIMESTAMP NOT NULL
        );
        """
    )


@migration
def m004_failure_retryable(con: duckdb.DuckDBPyConnection) -> None:
    # Failures from before this column were all treated as retryable; keep that.
    con.execute("ALTER TABLE annotation_failures ADD COLUMN retryable BOOLEAN DEFAULT TRUE")


@migration
def m005_stable_views(con: duckdb.DuckDBPyConnection) -> None:
    # The threshold is written into the view when the migration runs, like any DDL: a
    # later change of ACCEPT_THRESHOLD needs a migration that replaces the view.
    accept = float(ACCEPT_THRESHOLD)
    con.execute(
        f"""
        -- Model-only: the review migration replaces it with person decisions applied,
        -- keeping these columns.
        CREATE VIEW final_labels AS
        SELECT paper_id, field, label, confidence, evidence,
               'model' AS decided_by, CAST(NULL AS VARCHAR) AS reviewer,
               created_at AS decided_at, annotator, model, annotation_id
        FROM labels
        WHERE current AND confidence >= {accept};
        -- One row per paper and annotator key with a current annotation: papers annotated
        -- by two annotators (or two models) have two rows, never a mix of both.
        CREATE VIEW paper_labels AS
        SELECT l.paper_id, p.arxiv_id, p.title, p.abstract, p.url, p.published_at,
               l.annotator, l.model, l.annotation_id, l.created_at AS annotated_at,
               list(l.label ORDER BY l.rank) FILTER (WHERE l.field = 'technique') AS technique,
               list(l.label ORDER BY l.rank) FILTER (WHERE l.field = 'modality') AS modality,
               list(l.label ORDER BY l.rank) FILTER (WHERE l.field = 'target_metric')
                   AS target_metric,
               min(l.confidence) AS min_confidence
        FROM labels l JOIN papers p USING (paper_id)
        WHERE l.current
        GROUP BY ALL;
        """
    )


@migration
def m006_review(con: duckdb.DuckDBPyConnection) -> None:
    # The accept threshold is written into the view (papertag.schema.ACCEPT_THRESHOLD = 0.8, the
    # same as issue 8's model-only final_labels); a new threshold needs a new migration.
    con.execute(
        """
        CREATE SEQUENCE review_decision_seq;
        -- Append-only audit trail of every review decision; undo appends a reversal row.
        CREATE TABLE review_decisions (
            decision_id BIGINT PRIMARY KEY DEFAULT nextval('review_decision_seq'),
            paper_id VARCHAR NOT NULL,
            field VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            previous_value VARCHAR,
            new_value VARCHAR,
            reviewer VARCHAR NOT NULL,
            decided_at TIMESTAMP NOT NULL,
            annotation_id VARCHAR,
            confidence DOUBLE,
            reverts BIGINT,
            source VARCHAR NOT NULL
        );
        -- What a person currently says about each (paper, field, label): the newest decision
        -- touching it that has not been undone. A change L -> M says "not L" and "M".
        CREATE VIEW review_verdicts AS
        WITH active AS (
            SELECT * FROM review_decisions
            WHERE action <> 'undo'
              AND decision_id NOT IN (
                  SELECT reverts FROM review_decisions WHERE action = 'undo' AND reverts IS NOT NULL)
        ),
        said AS (
            SELECT paper_id, field, label, action IN ('accept', 'add') AS included,
                   reviewer, decided_at, decision_id, annotation_id, action
            FROM active WHERE action IN ('accept', 'reject', 'add')
            UNION ALL
            SELECT paper_id, field, label, FALSE, reviewer, decided_at, decision_id, annotation_id, action
            FROM active WHERE action = 'change'
            UNION ALL
            SELECT paper_id, field, new_value, TRUE, reviewer, decided_at, decision_id, annotation_id, action
            FROM active WHERE action = 'change'
        )
        SELECT * FROM said
        QUALIFY row_number() OVER (PARTITION BY paper_id, field, label ORDER BY decision_id DESC) = 1;
        -- The labels to use: a model's current labels at or above the accept threshold, with every
        -- person's verdict applied on top (a verdict applies to each current annotation of its paper).
        CREATE OR REPLACE VIEW final_labels AS
        WITH model_rows AS (
            SELECT l.paper_id, l.field, l.label, l.confidence, l.evidence,
                   CAST('model' AS VARCHAR) AS decided_by, CAST(NULL AS VARCHAR) AS reviewer,
                   CAST(l.created_at AS TIMESTAMP) AS decided_at,
                   l.annotator, l.model, l.annotation_id
            FROM labels l
            WHERE l.current AND l.confidence >= 0.8
              AND NOT EXISTS (
                  SELECT 1 FROM review_verdicts v
                  WHERE v.paper_id = l.paper_id AND v.field = l.field AND v.label = l.label)
        ),
        person_rows AS (
            SELECT v.paper_id, v.field, v.label, m.confidence, m.evidence,
                   CAST('person' AS VARCHAR) AS decided_by, v.reviewer,
                   CAST(v.decided_at AS TIMESTAMP) AS decided_at,
                   s.annotator, s.model, s.annotation_id
            FROM review_verdicts v
            LEFT JOIN annotation_status s ON s.paper_id = v.paper_id AND s.current
            LEFT JOIN annotation_labels m
                   ON m.annotation_id = s.annotation_id AND m.field = v.field AND m.label = v.label
            WHERE v.included
        )
        SELECT * FROM model_rows
        UNION ALL
        SELECT * FROM person_rows;
        """
    )


@migration
def m007_call_journal(con: duckdb.DuckDBPyConnection) -> None:
    # call_uid joins a row to the crash journal it may have been recovered from;
    # replay_of marks a response reused from a killed run instead of being paid for twice.
    con.execute("ALTER TABLE llm_calls ADD COLUMN call_uid VARCHAR")
    con.execute("ALTER TABLE llm_calls ADD COLUMN replay_of BIGINT")


@migration
def m008_request_templates(con: duckdb.DuckDBPyConnection) -> None:
    # Every request of a run repeats the same system prompt and schema (most of its bytes)
    # around one paper. The repeated part is stored once per run, in two halves; a call
    # keeps only what lies between them. `llm_calls` becomes a view that puts each request
    # back together, with the same columns as the table it replaces.
    con.execute(
        """
        CREATE TABLE llm_request_templates (
            template_id VARCHAR PRIMARY KEY,
            head VARCHAR NOT NULL,
            tail VARCHAR NOT NULL
        );
        ALTER TABLE llm_calls RENAME TO llm_call_rows;
        ALTER TABLE llm_call_rows ADD COLUMN request_template VARCHAR;
        CREATE VIEW llm_calls AS
        SELECT c.call_id, c.run_id, c.paper_id, c.annotation_id, c.annotator, c.model, c.host,
               c.path, c.prompt_version, c.taxonomy_version, c.options, c.request_hash,
               CASE WHEN c.request_template IS NULL THEN c.request_body
                    ELSE t.head || c.request_body || t.tail END AS request_body,
               c.status, c.response_body, c.finish_reason, c.refusal, c.prompt_tokens,
               c.completion_tokens, c.cost_usd, c.duration_ms, c.attempt, c.error,
               c.started_at, c.call_uid, c.replay_of
        FROM llm_call_rows c
        LEFT JOIN llm_request_templates t ON t.template_id = c.request_template;
        """
    )


@migration
def m009_call_rows_without_index(con: duckdb.DuckDBPyConnection) -> None:
    # The primary key's index made every checkpoint of appended calls cost in proportion to
    # the whole table (100 new rows: 50 ms over 2,000 stored, 260 ms over 22,000; 12 and
    # 7 ms without it), so a growing call log slowed every run's close and the checkpoints
    # during runs. call_id comes from llm_call_seq, unique without an index to check it.
    # DuckDB cannot drop a primary key: the table is copied, and its NOT NULLs, the id's
    # default and the view over it are carried over as the catalog has them.
    not_null = [
        row[0]
        for row in con.execute(
            "SELECT unnest(constraint_column_names) FROM duckdb_constraints() "
            "WHERE table_name = 'llm_call_rows' AND constraint_type = 'NOT NULL'"
        ).fetchall()
    ]
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'llm_calls'").fetchone()
    if view is None:
        raise StoreError("m009: the llm_calls view of m008 is missing")
    con.execute(
        """
        DROP VIEW llm_calls;
        CREATE TABLE llm_call_rows_new AS SELECT * FROM llm_call_rows ORDER BY call_id;
        DROP TABLE llm_call_rows;
        ALTER TABLE llm_call_rows_new RENAME TO llm_call_rows;
        ALTER TABLE llm_call_rows ALTER COLUMN call_id SET DEFAULT nextval('llm_call_seq');
        """
    )
    for column in not_null:
        con.execute(f"ALTER TABLE llm_call_rows ALTER COLUMN {column} SET NOT NULL")
    con.execute(view[0])


@migration
def m010_decision_notes(con: duckdb.DuckDBPyConnection) -> None:
    # A person's words on a decision: required when the label a person sets is 'other' (the
    # taxonomy asks what the 'other' is, as a model's 'other' label carries it), free otherwise.
    con.execute("ALTER TABLE review_decisions ADD COLUMN note VARCHAR")


@migration
def m011_models(con: duckdb.DuckDBPyConnection) -> None:
    # Trained models of the learned annotator: arrays in an npz archive (never pickle), one
    # row per (name, content hash); the newest row of a name is the one used.
    con.execute(
        """
        CREATE TABLE models (
            name VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            meta JSON,
            data BLOB NOT NULL,
            PRIMARY KEY (name, version)
        )
        """
    )


@migration
def m012_final_labels_note(con: duckdb.DuckDBPyConnection) -> None:
    # final_labels gains `note` (last, so the stable columns keep their places): what an
    # `other` label is, in the person's words when a person set it, else the model's.
    con.execute(
        """
        CREATE OR REPLACE VIEW final_labels AS
        WITH model_rows AS (
            SELECT l.paper_id, l.field, l.label, l.confidence, l.evidence,
                   CAST('model' AS VARCHAR) AS decided_by, CAST(NULL AS VARCHAR) AS reviewer,
                   CAST(l.created_at AS TIMESTAMP) AS decided_at,
                   l.annotator, l.model, l.annotation_id, l.note
            FROM labels l
            WHERE l.current AND l.confidence >= 0.8
              AND NOT EXISTS (
                  SELECT 1 FROM review_verdicts v
                  WHERE v.paper_id = l.paper_id AND v.field = l.field AND v.label = l.label)
        ),
        person_rows AS (
            SELECT v.paper_id, v.field, v.label, m.confidence, m.evidence,
                   CAST('person' AS VARCHAR) AS decided_by, v.reviewer,
                   CAST(v.decided_at AS TIMESTAMP) AS decided_at,
                   s.annotator, s.model, s.annotation_id,
                   coalesce(d.note, m.note) AS note
            FROM review_verdicts v
            JOIN review_decisions d USING (decision_id)
            LEFT JOIN annotation_status s ON s.paper_id = v.paper_id AND s.current
            LEFT JOIN annotation_labels m
                   ON m.annotation_id = s.annotation_id AND m.field = v.field AND m.label = v.label
            WHERE v.included
        )
        SELECT * FROM model_rows
        UNION ALL
        SELECT * FROM person_rows
        """
    )


@migration
def m013_digest_path(con: duckdb.DuckDBPyConnection) -> None:
    # A digest is now keyed on what it lists (ingest's listing hash), no longer on its file
    # name, so two files both called papers.json are two digests. Rows written before keep
    # their file-name ids (queries and links that use them still work) and are recognised
    # again by their bytes' sha256. `source` stays the base name; `path` is where the file
    # was first read from, for people telling same-named files apart (NULL for old rows).
    con.execute("ALTER TABLE digests ADD COLUMN path VARCHAR")


@migration
def m014_pulled_days(con: duckdb.DuckDBPyConnection) -> None:
    # The days `papertag pull` fetched from the daily-papers API, each stored in the same
    # transaction as its digest (`hf:YYYY-MM-DD`): a day recorded here is in the database. A
    # day's list grows during that day and the next, so a day fetched before two days had
    # passed since it began (UTC) is fetched again by the next pull; after that it is final.
    con.execute(
        """
        CREATE TABLE pulled_days (
            day DATE PRIMARY KEY,
            papers INTEGER NOT NULL,      -- entries in its list; 0 for a day without papers
            fetched_at TIMESTAMP NOT NULL,
            url VARCHAR NOT NULL
        )
        """
    )


@migration
def m015_call_usage_and_papers(con: duckdb.DuckDBPyConnection) -> None:
    # A call may carry several papers (--papers-per-call) and a provider may serve part of
    # its prompt from cache at a lower price. Each call's row keeps the cached prompt
    # tokens and the papers it carried (the view shows how many); a call of several papers
    # names none in paper_id or annotation_id, so each annotation names the call whose
    # answer it was validated from. Rows before this are calls of one paper.
    con.execute(
        """
        ALTER TABLE llm_call_rows ADD COLUMN cached_tokens INTEGER;
        ALTER TABLE llm_call_rows ADD COLUMN paper_ids VARCHAR[];
        ALTER TABLE annotations ADD COLUMN call_uid VARCHAR;
        DROP VIEW llm_calls;
        CREATE VIEW llm_calls AS
        SELECT c.call_id, c.run_id, c.paper_id, c.annotation_id, c.annotator, c.model, c.host,
               c.path, c.prompt_version, c.taxonomy_version, c.options, c.request_hash,
               CASE WHEN c.request_template IS NULL THEN c.request_body
                    ELSE t.head || c.request_body || t.tail END AS request_body,
               c.status, c.response_body, c.finish_reason, c.refusal, c.prompt_tokens,
               c.completion_tokens, c.cost_usd, c.duration_ms, c.attempt, c.error,
               c.started_at, c.call_uid, c.replay_of, c.cached_tokens,
               coalesce(len(c.paper_ids), 1)::INTEGER AS papers,
               coalesce(c.paper_ids, [c.paper_id]) AS paper_ids
        FROM llm_call_rows c
        LEFT JOIN llm_request_templates t ON t.template_id = c.request_template;
        """
    )


@migration
def m016_llm_batches(con: duckdb.DuckDBPyConnection) -> None:
    # Batches sent to a server's Batch API (`annotate --batch`). Each step's id is written
    # before the next step starts (file uploaded, batch created), so a run killed at any
    # point knows on its next start what the server already has, and never sends a paper
    # again while a batch holding it is open. A batch is closed (collected_at) in the same
    # transaction that stores its answers as llm_call_rows.
    con.execute(
        """
        CREATE TABLE llm_batches (
            batch_uid VARCHAR PRIMARY KEY,     -- ours: in the file's name and the batch's metadata
            annotator VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            host VARCHAR NOT NULL,
            base_url VARCHAR,                  -- where to ask about it (NULL: OpenAI's)
            prompt_version VARCHAR NOT NULL,
            taxonomy_version VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,
            requests INTEGER NOT NULL,
            papers INTEGER NOT NULL,
            -- prepared, uploaded, then the server's: validating, in_progress, finalizing,
            -- cancelling, completed, expired, failed, cancelled
            status VARCHAR NOT NULL,
            input_file_id VARCHAR,
            batch_id VARCHAR,
            output_file_id VARCHAR,
            error_file_id VARCHAR,
            completed INTEGER,
            failed INTEGER,
            error VARCHAR,
            run_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            collected_at TIMESTAMP
        );
        -- The papers of each request line (one, or several in a call of --papers-per-call).
        CREATE TABLE llm_batch_requests (
            batch_uid VARCHAR NOT NULL,
            custom_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,         -- the paper's number in its request, from 0
            paper_id VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            request_hash VARCHAR NOT NULL,
            -- the llm_call_rows row its answer was stored as, once collected
            call_uid VARCHAR,
            -- when its papers' results (or, without an answer, their return to the queue)
            -- were committed
            settled_at TIMESTAMP
        );
        """
    )


@migration
def m017_final_labels_prefer_llm(con: duckdb.DuckDBPyConnection) -> None:
    # `--annotator cascade` keeps two annotations of a doubtful paper: the learned model's
    # and the LLM's it was sent to. final_labels takes the LLM's labels where a current LLM
    # annotation exists, never a mix of both; a person's verdict still wins over either.
    # Papers without one keep every current annotation's labels, as before.
    con.execute(
        """
        CREATE OR REPLACE VIEW final_labels AS
        WITH llm_papers AS (
            SELECT DISTINCT paper_id FROM annotation_status WHERE current AND annotator = 'llm'
        ),
        model_rows AS (
            SELECT l.paper_id, l.field, l.label, l.confidence, l.evidence,
                   CAST('model' AS VARCHAR) AS decided_by, CAST(NULL AS VARCHAR) AS reviewer,
                   CAST(l.created_at AS TIMESTAMP) AS decided_at,
                   l.annotator, l.model, l.annotation_id, l.note
            FROM labels l
            WHERE l.current AND l.confidence >= 0.8
              AND (l.annotator = 'llm' OR l.paper_id NOT IN (SELECT paper_id FROM llm_papers))
              AND NOT EXISTS (
                  SELECT 1 FROM review_verdicts v
                  WHERE v.paper_id = l.paper_id AND v.field = l.field AND v.label = l.label)
        ),
        person_rows AS (
            SELECT v.paper_id, v.field, v.label, m.confidence, m.evidence,
                   CAST('person' AS VARCHAR) AS decided_by, v.reviewer,
                   CAST(v.decided_at AS TIMESTAMP) AS decided_at,
                   s.annotator, s.model, s.annotation_id,
                   coalesce(d.note, m.note) AS note
            FROM review_verdicts v
            JOIN review_decisions d USING (decision_id)
            LEFT JOIN annotation_status s ON s.paper_id = v.paper_id AND s.current
                 AND (s.annotator = 'llm' OR s.paper_id NOT IN (SELECT paper_id FROM llm_papers))
            LEFT JOIN annotation_labels m
                   ON m.annotation_id = s.annotation_id AND m.field = v.field AND m.label = v.label
            WHERE v.included
        )
        SELECT * FROM model_rows
        UNION ALL
        SELECT * FROM person_rows
        """
    )
