"""Several papers a call (``--papers-per-call K``) against the fault-injecting server.

One request carries K papers numbered 1..K; the answer has one entry per paper, each
validated on its own against its paper's text, and a paper whose entry fails is asked
again alone. HTTP goes through the real openai client; only the server is ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from papertag.annotate import annotate_papers
from papertag.annotate.recovery import paid_answers
from papertag.annotators import PaperInput
from papertag.annotators.llm.annotator import LLMAnnotator
from papertag.annotators.llm.config import LLMConfig
from papertag.annotators.llm.prices import estimate_cost
from papertag.cli import app
from papertag.db import Store
from papertag.ingest import ingest_digests

from .fault_server import Reply, completion, fault_server, papers_of, valid_answer

ABSTRACTS = [
    "We propose a 4-bit post-training quantization method for large language models that "
    "reduces memory by 3x while keeping perplexity close to the full-precision model.",
    "We prune attention heads of vision transformers with a learned mask and cut latency by "
    "half on mobile phones without retraining the backbone.",
    "A state space model for long audio sequences replaces attention and scales linearly "
    "with the number of frames in a recording.",
    "We distill a diffusion sampler into four steps and keep image quality on ImageNet at a "
    "fraction of the compute of the teacher model.",
    "Token merging for video transformers lowers the number of tokens per frame and speeds "
    "up action recognition on commodity GPUs.",
    "Low-rank adapters for code models are tuned on a single GPU and match full fine-tuning "
    "on program synthesis benchmarks with fewer parameters.",
    "An FPGA accelerator for sparse graph neural networks streams edges from memory and "
    "raises throughput on citation graphs by an order of magnitude.",
]


@pytest.fixture
def papers(tmp_path: Path, db_path: Path) -> Path:
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(
            json.dumps({"title": f"Paper {i}", "abstract": a}) + "\n"
            for i, a in enumerate(ABSTRACTS, start=1)
        )
    )
    assert ingest_digests([src], db_path).ok
    return db_path


def run(db: Path, url: str, k: int, **kw: Any) -> Any:
    return annotate_papers(
        db, "llm", model="fake-model", base_url=url, backoff=0.01, papers_per_call=k, **kw
    )


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Store(db) as s:
        return s.con.execute(sql, params or []).fetchall()


def paper_ids(db: Path) -> list[str]:
    """The papers in ingest order (the order calls take them in)."""
    return [r[0] for r in rows(db, "SELECT paper_id FROM papers ORDER BY first_seen, paper_id")]


def titles(db: Path) -> list[str]:
    """The papers' titles in the order calls take them."""
    return [
        r[0] for r in rows(db, "SELECT title FROM papers ORDER BY first_seen, paper_id LIMIT 3")
    ]


def edited(request: dict[str, Any], change: dict[int, dict[str, Any] | None]) -> Reply:
    """The server's valid answer to ``request`` with some papers' entries changed: a dict
    updates the entry's first technique label, None drops the entry."""
    content = json.loads(valid_answer(request)["choices"][0]["message"]["content"])
    entries = []
    for entry in content["papers"]:
        if entry["paper"] in change:
            if change[entry["paper"]] is None:
                continue
            entry["technique"][0].update(change[entry["paper"]])
        entries.append(entry)
    return Reply(body=completion(json.dumps({"papers": entries})))


def test_k_papers_a_call_each_annotated_and_tied_to_its_call(papers: Path) -> None:
    with fault_server() as srv:
        report = run(papers, srv.url, 3, concurrency=1)
        sent = list(srv.requests)
    assert (report.done, report.failed, report.calls) == (7, 0, 3)
    # Papers go in order, three a call, numbered 1..K in the user message; the answer may
    # take max_tokens for each.
    assert [[p["id"] for p in papers_of(r)] for r in sent] == [["1", "2", "3"]] * 2 + [["1"]]
    assert [r["max_tokens"] for r in sent] == [3 * 1024, 3 * 1024, 1024]
    # The static part comes first and is byte-identical in every call; the papers come
    # last, in the last message.
    assert len({json.dumps(r["messages"][0]) for r in sent}) == 1
    assert len({json.dumps(r["response_format"]) for r in sent}) == 1
    assert all(list(r)[-1] == "messages" and r["messages"][-1]["role"] == "user" for r in sent)
    # A full call's row keeps only its papers' part; the view puts the body back together.
    stored = rows(
        papers,
        "SELECT c.papers, r.request_template IS NOT NULL, c.request_body FROM llm_calls c "
        "JOIN llm_call_rows r USING (call_id)",
    )
    assert sorted((n, kept) for n, kept, _ in stored) == [(1, False), (3, True), (3, True)]
    assert sorted(json.loads(body)["messages"][1]["content"] for *_, body in stored) == sorted(
        r["messages"][1]["content"] for r in sent
    )
    ids = paper_ids(papers)
    calls = rows(
        papers,
        "SELECT call_uid, paper_id, annotation_id, papers, paper_ids FROM llm_calls "
        "ORDER BY call_id",
    )
    # Calls settle in order here (one at a time): which papers each carried, and how many.
    assert sorted(c[4] for c in calls) == [ids[0:3], ids[3:6], ids[6:7]]
    by_uid = {c[0]: c for c in calls}
    for _uid, paper_id, annotation_id, n, carried in calls:
        assert n == len(carried)
        # A call of several papers names none of them alone.
        assert (paper_id, annotation_id is None) == ((None, True) if n > 1 else (carried[0], False))
    # Every annotation names the call whose answer it was validated from.
    made = rows(papers, "SELECT paper_id, call_uid FROM annotations")
    assert len(made) == 7 and all(pid in by_uid[uid][4] for pid, uid in made)


def test_a_paper_whose_entry_fails_is_asked_again_alone(papers: Path) -> None:
    def route(request: dict[str, Any], n: int) -> Reply | None:
        if len(papers_of(request)) == 3:
            return edited(request, {2: {"id": "quantisation"}})
        return None  # alone: the server's valid answer

    with fault_server(route=route) as srv:
        report = run(papers, srv.url, 3, concurrency=1, limit=3)
        first, again = srv.requests
    assert (report.done, report.failed, report.calls) == (3, 0, 2)
    # The re-ask carries the second paper alone (as paper 1), what the model wrote for it,
    # and the error to fix; the other two papers were not asked again.
    assert [p["title"] for p in papers_of(again)] == [titles(papers)[1]]
    system, _user, answer, feedback = again["messages"]
    assert system == first["messages"][0]
    wrote = json.loads(answer["content"])["papers"]
    assert [e["paper"] for e in wrote] == [1] and wrote[0]["technique"][0]["id"] == "quantisation"
    assert "'quantisation' is not a technique id" in feedback["content"]
    ids = paper_ids(papers)
    made = dict(rows(papers, "SELECT paper_id, call_uid FROM annotations"))
    calls = {
        uid: carried for uid, carried in rows(papers, "SELECT call_uid, paper_ids FROM llm_calls")
    }
    assert calls[made[ids[1]]] == [ids[1]]
    assert calls[made[ids[0]]] == calls[made[ids[2]]] == ids[0:3]


def test_entries_are_matched_by_number_and_checked_against_their_own_paper(
    papers: Path,
) -> None:
    """Entries in any order find their papers by number; an entry quoting another paper's
    text fails that paper alone (asked again), not the call."""

    def route(request: dict[str, Any], n: int) -> Reply | None:
        if len(papers_of(request)) == 1:
            return None
        content = json.loads(valid_answer(request)["choices"][0]["message"]["content"])
        entries = content["papers"][::-1]
        # Paper 1's entry quotes paper 2's abstract.
        entries[-1]["technique"][0]["evidence"] = entries[-2]["technique"][0]["evidence"]
        return Reply(body=completion(json.dumps({"papers": entries})))

    with fault_server(route=route) as srv:
        report = run(papers, srv.url, 3, concurrency=1, limit=3)
        asked = [[p["title"] for p in papers_of(r)] for r in srv.requests]
    assert (report.done, report.failed) == (3, 0)
    first = titles(papers)
    assert asked == [first, first[:1]]
    feedback = srv.requests[1]["messages"][-1]["content"]
    assert "technique[0].evidence" in feedback and "does not occur" in feedback


def test_a_paper_the_answer_left_out_is_asked_afresh_alone(papers: Path) -> None:
    def route(request: dict[str, Any], n: int) -> Reply | None:
        return edited(request, {3: None}) if len(papers_of(request)) == 3 else None

    with fault_server(route=route) as srv:
        report = run(papers, srv.url, 3, concurrency=1, limit=3)
        again = srv.requests[1]
    assert (report.done, report.failed) == (3, 0)
    # Nothing of the other papers' answer goes with it: a first ask of that paper alone.
    assert [m["role"] for m in again["messages"]] == ["system", "user"]
    assert [p["title"] for p in papers_of(again)] == [titles(papers)[2]]


def test_reasks_alone_are_bounded_then_a_failure_row_for_that_paper_only(papers: Path) -> None:
    second = titles(papers)[1]

    def route(request: dict[str, Any], n: int) -> Reply | None:
        numbers = [int(p["id"]) for p in papers_of(request) if p["title"] == second]
        return edited(request, {number: {"id": "quantisation"} for number in numbers})

    with fault_server(route=route) as srv:
        report = run(papers, srv.url, 3, concurrency=1, limit=3, max_reasks=2)
        assert srv.calls == 3  # the call of three, then two asks of paper 2 alone
    assert (report.done, report.failed) == (2, 1)
    ((reason, attempts),) = rows(papers, "SELECT reason, attempts FROM annotation_failures")
    assert attempts == 3 and "after 3 attempts" in reason and "quantisation" in reason


def test_a_refused_call_of_several_papers_asks_each_alone(papers: Path) -> None:
    def route(request: dict[str, Any], n: int) -> Reply | None:
        if len(papers_of(request)) > 1:
            return Reply(body=completion("", refusal="I can't help with that."))
        return None

    with fault_server(route=route) as srv:
        report = run(papers, srv.url, 3, concurrency=1, limit=3)
        sizes = [len(papers_of(r)) for r in srv.requests]
    assert (report.done, report.failed) == (3, 0) and sizes == [3, 1, 1, 1]


def test_the_request_built_for_a_batch_is_the_body_a_live_call_sends(papers: Path) -> None:
    """build_request is what a live call POSTs (a batch file holds the same bodies), and
    parse_answers reads the live answer as the run does."""
    with Store(papers) as s:
        texts = s.con.execute(
            "SELECT paper_id, title, abstract FROM papers ORDER BY first_seen, paper_id LIMIT 2"
        ).fetchall()
    inputs = [PaperInput(*t) for t in texts]
    with fault_server() as srv:
        ann = LLMAnnotator(model="fake-model", base_url=srv.url, papers_per_call=2)
        try:
            results = ann.annotate_call(inputs)
        finally:
            ann.close()
        sent = srv.requests[0]
    config = LLMConfig(model="fake-model", base_url=srv.url, papers_per_call=2)
    assert sent == config.build_request(inputs)
    assert json.loads(json.dumps(config.build_request(inputs))) == sent  # plain JSON
    assert all(not isinstance(r, Exception) for r in results)
    parsed = config.parse_answers(inputs, valid_answer(sent))
    assert [a.paper for a in parsed] == inputs and all(a.annotation for a in parsed)


def test_cached_prompt_tokens_are_stored_priced_and_reported(
    papers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault server caches prompt prefixes as a provider does: after the first call,
    the static part of each request is reported as cached and billed at its price."""
    monkeypatch.setenv("PAPERTAG_PRICES", json.dumps({"fake-model": [1.0, 2.0, 0.25]}))
    with fault_server() as srv:
        result = CliRunner().invoke(
            app,
            [
                *("--db", str(papers), "annotate", "-a", "llm", "--model", "fake-model"),
                *("--base-url", srv.url, "--papers-per-call", "2", "--concurrency", "1"),
            ],
        )
    assert result.exit_code == 0, result.output
    calls = rows(
        papers,
        "SELECT prompt_tokens, cached_tokens, completion_tokens, cost_usd FROM llm_calls "
        "ORDER BY call_id",
    )
    assert len(calls) == 4 and calls[0][1] == 0 and all(c[1] > 1024 for c in calls[1:])
    for prompt, cached, out, cost in calls:
        assert cost == pytest.approx(((prompt - cached) * 1.0 + cached * 0.25 + out * 2.0) / 1e6)
        assert cost == pytest.approx(estimate_cost("fake-model", prompt, out, cached))
    share = sum(c[1] for c in calls) / sum(c[0] for c in calls)
    assert f"({share:.0%} from the provider's cache)" in result.output


def test_answers_paid_before_a_kill_are_offered_by_call(papers: Path) -> None:
    """A call of several papers whose run stored none of its results is offered for replay
    (to the papers still to do); once its run stored a result of one of them, it is not."""
    ids = paper_ids(papers)
    ann = LLMConfig(model="fake-model", base_url="http://127.0.0.1:9/v1", papers_per_call=3)
    with Store(papers) as s:
        s.con.execute(
            "INSERT INTO llm_call_rows (run_id, annotator, model, host, path, prompt_version, "
            "taxonomy_version, request_hash, status, response_body, attempt, started_at, "
            "paper_ids) VALUES ('run1', ?, ?, ?, '/v1/chat/completions', ?, ?, 'h3', 200, "
            "'{\"k\": 3}', 1, TIMESTAMP '2026-12-01 10:00', ?)",
            [ann.name, ann.model, ann.host, ann.prompt_version, ann.taxonomy.version, ids[:3]],
        )
        call_id = s.scalar("SELECT max(call_id) FROM llm_calls")
        assert paid_answers(s, ann, ids[2:]) == {"h3": [(call_id, '{"k": 3}')]}
        assert paid_answers(s, ann, ids[3:]) == {}
        s.con.execute(
            "INSERT INTO annotation_failures (paper_id, content_hash, annotator, model, "
            "prompt_version, taxonomy_version, run_id, reason, attempts, created_at, retryable) "
            "VALUES (?, 'h', ?, ?, ?, ?, 'run1', 'x', 1, now()::TIMESTAMP, false)",
            [ids[1], ann.name, ann.model, ann.prompt_version, ann.taxonomy.version],
        )
        assert paid_answers(s, ann, ids[:3]) == {}


def test_max_cost_holds_with_several_papers_a_call(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "many.jsonl"
    src.write_text(
        "".join(
            json.dumps({"title": f"P{i}", "abstract": ABSTRACTS[i % len(ABSTRACTS)] + f" ({i})"})
            + "\n"
            for i in range(40)
        )
    )
    assert ingest_digests([src], db_path).ok
    monkeypatch.setenv("PAPERTAG_PRICES", json.dumps({"fake-model": [1.0, 2.0]}))
    with fault_server() as srv:
        report = run(db_path, srv.url, 4, concurrency=4, max_cost=0.02)
    assert report.stopped == "max-cost" and 0 < report.done < 40
    assert report.cost_usd <= 0.02 and report.left == 40 - report.done
    # Whole calls started: the papers done are a multiple of four.
    assert report.done % 4 == 0


def test_dry_run_counts_each_paper_its_share_of_a_call(papers: Path) -> None:
    """--dry-run and --max-cost estimate each paper with its share of what a call of K
    papers sends once: eight a call, a paper's prompt is a fraction of one alone."""
    from papertag.annotate import estimate

    url = "http://127.0.0.1:9/v1"
    one, eight = (
        estimate(papers, "llm", model="gpt-4o-mini", base_url=url, papers_per_call=k)
        for k in (1, 8)
    )
    assert one.papers == eight.papers == 7
    assert eight.prompt_tokens < one.prompt_tokens / 2
    assert eight.cost_usd is not None and one.cost_usd is not None
    assert eight.cost_usd < one.cost_usd


@pytest.mark.parametrize("value", ["0", "33"])
def test_papers_per_call_out_of_range_is_refused(papers: Path, value: str) -> None:
    result = CliRunner().invoke(
        app,
        ["--db", str(papers), "annotate", "-a", "llm", "--model", "m", "--papers-per-call", value],
    )
    assert result.exit_code == 2 and "--papers-per-call" in result.output


def test_papers_per_call_is_for_the_llm_annotator_only(papers: Path) -> None:
    result = CliRunner().invoke(
        app, ["--db", str(papers), "annotate", "-a", "rules", "--papers-per-call", "4"]
    )
    assert result.exit_code == 2 and "--papers-per-call" in result.stderr
    assert rows(papers, "SELECT count(*) FROM annotations") == [(0,)]


def test_a_call_paid_before_a_kill_is_made_again_as_it_was(papers: Path) -> None:
    """Calls settle whole, but a paper can be left to do beside them (a failure worth
    retrying): the papers still to do then no longer fall into the same calls. A call a
    killed run paid for is made again with its own papers, and its answer replayed."""
    ids = paper_ids(papers)
    with fault_server() as srv:
        first = run(papers, srv.url, 3, concurrency=1, limit=6)
        assert (first.done, srv.calls) == (6, 2)
        # As if the run had died before storing the second call's papers (its answer was
        # journaled), and the first paper had ended in a failure worth retrying.
        with Store(papers) as s:
            gone = ids[3:6] + ids[:1]
            s.con.execute(
                "DELETE FROM annotation_labels WHERE annotation_id IN (SELECT annotation_id "
                "FROM annotations WHERE paper_id IN (SELECT unnest(?::VARCHAR[])))",
                [gone],
            )
            s.con.execute(
                "DELETE FROM annotations WHERE paper_id IN (SELECT unnest(?::VARCHAR[]))", [gone]
            )
        again = run(papers, srv.url, 3, concurrency=1, limit=6)
        asked = [[p["title"] for p in papers_of(r)] for r in srv.requests[2:]]
    # The first paper alone is asked; the second call's three papers come from its answer.
    assert (again.done, again.replayed, again.calls) == (4, 1, 1)
    assert asked == [[titles(papers)[0]]]
    with Store(papers) as s:
        assert s.scalar("SELECT count(DISTINCT paper_id) FROM annotations") == 6
