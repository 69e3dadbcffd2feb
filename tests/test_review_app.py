"""The review app driven by Textual's pilot: keys in, rows in the database out."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from papertag.db import Store
from papertag.review import QueueItem, decisions, review_queue
from papertag.review.app import HelpScreen, NoteScreen, PickerScreen, ReviewApp
from papertag.taxonomy import load_taxonomy

from .test_review import final, review_db, review_template

__all__ = ["review_db", "review_template"]  # fixtures shared with test_review

Script = Callable[[Pilot[None], ReviewApp], Awaitable[None]]


def drive(db: Path, script: Script, *, reviewer: str = "tester", **filters: object) -> ReviewApp:
    """Run the app on the queue as `papertag review` would, and play ``script`` on it."""

    async def main() -> ReviewApp:
        with Store(db) as store:
            tui = ReviewApp(store, review_queue(store, **filters), reviewer=reviewer)  # type: ignore[arg-type]
            async with tui.run_test(size=(110, 40)) as pilot:
                await pilot.pause()
                await script(pilot, tui)
                await pilot.pause()
            return tui

    return asyncio.run(main())


def screen_text(tui: ReviewApp) -> str:
    """The screen as text (the SVG screenshot without its markup)."""
    svg = tui.export_screenshot()
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


def test_keys_record_decisions_at_once(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)
        # The label to add: a modality of queue[3]'s paper that is neither assigned nor queued.
        paper = queue[3].paper_id
        known = {i.label for i in queue if i.paper_id == paper and i.field == "modality"}
        known |= {
            r[0]
            for r in s.con.execute(
                "SELECT label FROM labels WHERE current AND paper_id = ? AND field = 'modality'",
                [paper],
            ).fetchall()
        }
    add = next(m for m in load_taxonomy().ids("modality") if m not in known and m != "other")
    change_to = next(i for i in load_taxonomy().ids(queue[2].field) if i != queue[2].label)
    seen: dict[str, list[tuple[str, str]]] = {}

    async def script(pilot: Pilot[None], tui: ReviewApp) -> None:
        assert tui.current == queue[0]
        await pilot.press("a")
        assert tui.current == queue[1]
        # Committed at once: another connection to the file sees it.
        other = tui.store.con.cursor()
        seen["after_a"] = other.execute("SELECT action, label FROM review_decisions").fetchall()
        other.close()
        await pilot.press("r")
        await pilot.press("c")
        assert isinstance(tui.screen, PickerScreen)
        await pilot.press(*change_to, "enter")
        assert not isinstance(tui.screen, PickerScreen)
        await pilot.press("n")
        await pilot.press(*add, "enter")
        await pilot.press("s")
        await pilot.press("q")

    tui = drive(review_db, script)
    assert seen["after_a"] == [("accept", queue[0].label)]
    with Store(review_db) as s:
        trail = [
            (d.action, d.field, d.label, d.new_value, d.reviewer, d.source) for d in decisions(s)
        ]
        assert trail == [
            ("accept", queue[0].field, queue[0].label, queue[0].label, "tester", "app"),
            ("reject", queue[1].field, queue[1].label, None, "tester", "app"),
            ("change", queue[2].field, queue[2].label, change_to, "tester", "app"),
            ("add", "modality", add, add, "tester", "app"),
            ("skip", queue[3].field, queue[3].label, queue[3].label, "tester", "app"),
        ]
        assert final(s, queue[0].paper_id, queue[0].field)[queue[0].label] == "person"
        assert final(s, queue[2].paper_id, queue[2].field)[change_to] == "person"
    assert tui.done == 3
    # The skipped item went to the end of this session's queue.
    assert tui.pending[-1] == queue[3]


def test_changing_to_other_asks_what_it_is(review_db: Path) -> None:
    with Store(review_db) as s:
        # The app's queue of one field (a paper's place follows its items of that field).
        queue = review_queue(s, field="technique")
    # Items already labelled other are passed over with a skip.
    skips = next(n for n, i in enumerate(queue) if i.label != "other")
    queue = queue[skips:]

    async def script(pilot: Pilot[None], tui: ReviewApp) -> None:
        for _ in range(skips):
            await pilot.press("s")
        assert tui.current == queue[0]
        await pilot.press("c", *"other", "enter")
        assert isinstance(tui.screen, NoteScreen)
        await pilot.press("escape")  # no note: nothing is recorded, the item stays
        assert not isinstance(tui.screen, NoteScreen) and tui.current == queue[0]
        await pilot.press("c", *"other", "enter", "enter")  # an empty note is not taken
        assert isinstance(tui.screen, NoteScreen)
        await pilot.press(*"spiking chips", "enter")
        assert not isinstance(tui.screen, NoteScreen)

    drive(review_db, script, field="technique")
    with Store(review_db) as s:
        made = [(d.label, d.action, d.new_value, d.note) for d in decisions(s)]
        assert made[skips:] == [(queue[0].label, "change", "other", "spiking chips")]


def test_undo_appends_reversals_and_brings_the_item_back(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)

    async def script(pilot: Pilot[None], tui: ReviewApp) -> None:
        await pilot.press("r", "s", "a")
        assert tui.current == queue[3]
        await pilot.press("u")  # the accept
        assert tui.current == queue[2]
        await pilot.press("u")  # the skip
        assert tui.current == queue[1]
        await pilot.press("u")  # the reject
        assert tui.current == queue[0]
        await pilot.press("u")  # nothing left to undo
        assert tui.current == queue[0]

    drive(review_db, script)
    with Store(review_db) as s:
        trail = [(d.action, d.label, d.reverts) for d in decisions(s)]
        assert trail == [
            ("reject", queue[0].label, None),
            ("skip", queue[1].label, None),
            ("accept", queue[2].label, None),
            ("undo", queue[2].label, 3),
            ("undo", queue[1].label, 2),
            ("undo", queue[0].label, 1),
        ]
        assert review_queue(s) == queue  # everything is back in the queue, in its order
        assert s.scalar("SELECT count(*) FROM final_labels WHERE decided_by = 'person'") == 0


def test_a_crash_loses_no_decision(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)

    async def crash(pilot: Pilot[None], tui: ReviewApp) -> None:
        await pilot.press("a", "r")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        drive(review_db, crash)
    with Store(review_db) as s:
        assert [(d.action, d.label) for d in decisions(s)] == [
            ("accept", queue[0].label),
            ("reject", queue[1].label),
        ]
        assert review_queue(s) == queue[2:]


def test_quitting_and_coming_back_resumes_the_queue(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)

    async def first(pilot: Pilot[None], tui: ReviewApp) -> None:
        await pilot.press("a", "r", "a", "q")

    async def second(pilot: Pilot[None], tui: ReviewApp) -> None:
        assert tui.current == queue[3]
        assert tui.total == len(queue) - 3
        assert f"done 0  ·  left {len(queue) - 3}" in screen_text(tui)
        await pilot.press("a", "q")

    drive(review_db, first)
    drive(review_db, second)
    with Store(review_db) as s:
        assert [d.label for d in decisions(s)] == [i.label for i in queue[:4]]
        assert review_queue(s) == queue[4:]


def test_a_skip_holds_in_the_next_session(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)

    async def first(pilot: Pilot[None], tui: ReviewApp) -> None:
        await pilot.press("s", "s", "a", "q")

    async def second(pilot: Pilot[None], tui: ReviewApp) -> None:
        # What was skipped comes after everything else, in the order it was skipped.
        assert tui.pending == [*queue[3:], queue[0], queue[1]]
        await pilot.press("q")

    drive(review_db, first)
    drive(review_db, second)
    with Store(review_db) as s:
        # A skip decides nothing: no person's row in final_labels for it.
        assert final(s, queue[0].paper_id, queue[0].field).get(queue[0].label) != "person"


def test_screen_shows_the_paper_the_label_and_the_keys(review_db: Path) -> None:
    with Store(review_db) as s:
        item: QueueItem = review_queue(s)[0]
        title = s.scalar("SELECT title FROM papers WHERE paper_id = ?", [item.paper_id])

    async def script(pilot: Pilot[None], tui: ReviewApp) -> None:
        shown = screen_text(tui)
        for words in (title.split()[0], item.label, f"{item.confidence:.2f}", "Other labels"):
            assert words in shown, words
        definition = load_taxonomy().definition(item.field, item.label)
        assert definition.split()[0] in shown
        await pilot.press("question_mark")
        assert isinstance(tui.screen, HelpScreen)
        assert "undo the last decision" in screen_text(tui)
        await pilot.press("escape")
        assert not isinstance(tui.screen, HelpScreen)
        await pilot.press("c", *"zzzz", "enter")  # nothing matches: enter does nothing
        assert isinstance(tui.screen, PickerScreen)
        assert "no id matches 'zzzz'" in screen_text(tui)
        await pilot.press("escape")  # a cancelled picker decides nothing
        assert not isinstance(tui.screen, PickerScreen)
        assert tui.current == item

    drive(review_db, script, field=item.field)
    with Store(review_db) as s:
        assert decisions(s) == []
