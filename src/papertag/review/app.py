"""``papertag review``: a keyboard-first terminal app over :mod:`papertag.review`.

UI only: the queue, decisions and undo are library calls, each decision committed as
it is made, so quitting (or a crash) loses nothing and the next run resumes the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Input, OptionList, Static
from textual.widgets.option_list import Option

from ..db import Store
from ..errors import ReviewError
from ..taxonomy import FIELDS, Taxonomy, load_taxonomy
from .core import (
    Decision,
    PaperContext,
    QueueItem,
    add_label,
    decide,
    default_reviewer,
    evidence_span,
    is_decided,
    other_needs_note,
    paper_context,
    undo_decision,
)

#: (key as shown, what it does); the help screen and the README list these.
KEYS: tuple[tuple[str, str], ...] = (
    ("a", "accept the proposed label"),
    ("r", "reject it"),
    ("c", "change it to another id of the field (fuzzy picker; 'other' asks what it is)"),
    ("n", "add a label the model missed, to this paper (fuzzy picker over all fields)"),
    ("s", "skip: come back to it after everything else, in later sessions too"),
    ("u", "undo the last decision or skip (the reversal is recorded)"),
    ("?", "show these keys"),
    ("q", "quit; every decision is already saved"),
)


EVIDENCE_STYLE = "bold black on yellow"


class HelpScreen(ModalScreen[None]):
    """The keys; any of escape, ? or q closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close"),
    ]

    def compose(self) -> ComposeResult:
        text = Text("Keys\n\n", style="bold")
        for key, what in KEYS:
            text.append(f"  {key:<3}", style="bold cyan")
            text.append(f"{what}\n")
        text.append(
            "\nIn a picker: type to filter, ↑/↓ to move, enter to choose, escape to cancel."
        )
        text.append("\nPress escape or ? to close.", style="dim")
        yield Vertical(Static(text), id="help")


@dataclass(frozen=True)
class Choice:
    field: str
    label: str


class PickerScreen(ModalScreen[Choice | None]):
    """A fuzzy picker over label ids: type to filter, enter chooses, escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
    ]

    def __init__(self, prompt: str, choices: list[Choice], taxonomy: Taxonomy) -> None:
        super().__init__()
        self.prompt = prompt
        self.choices = choices
        self.taxonomy = taxonomy
        self.multi_field = len({c.field for c in choices}) > 1
        self.shown: list[Choice] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static(Text(self.prompt, style="bold"))
            yield Input(placeholder="type to filter", id="query")
            yield Static(id="hint")
            yield OptionList(id="options")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    def _display(self, choice: Choice) -> str:
        return f"{choice.field}: {choice.label}" if self.multi_field else choice.label

    def _fill(self, query: str) -> None:
        matcher = Matcher(query) if query else None
        scored = [
            (matcher.match(self._display(c)) if matcher else 1.0, i, c)
            for i, c in enumerate(self.choices)
        ]
        self.shown = [c for score, _, c in sorted(scored, key=lambda t: (-t[0], t[1])) if score > 0]
        options = self.query_one(OptionList)
        options.clear_options()
        for c in self.shown:
            line = Text(self._display(c), style="bold")
            line.append("  " + self.taxonomy.definition(c.field, c.label), style="dim")
            options.add_option(Option(line))
        options.highlighted = 0 if self.shown else None
        hint = (
            f"{len(self.shown)} of {len(self.choices)} ids · ↑/↓ move · enter chooses · escape cancels"
            if self.shown
            else f"no id matches {query!r} · backspace to edit · escape cancels"
        )
        self.query_one("#hint", Static).update(
            Text(hint, style="dim" if self.shown else "bold red")
        )

    @on(Input.Changed, "#query")
    def _changed(self, event: Input.Changed) -> None:
        self._fill(event.value.strip())

    @on(Input.Submitted, "#query")
    def _submitted(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index is not None and index < len(self.shown):
            self.dismiss(self.shown[index])

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.shown[event.option_index])

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if self.shown:
            current = options.highlighted or 0
            options.highlighted = max(0, min(len(self.shown) - 1, current + step))

    def action_cancel(self) -> None:
        self.dismiss(None)


class NoteScreen(ModalScreen[str | None]):
    """One line of the person's words: what the 'other' label being set is."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(id="note"):
            yield Static(Text(self.prompt, style="bold"))
            yield Input(placeholder="a few words", id="note-text")
            yield Static(Text("enter records · escape cancels", style="dim"), id="note-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted, "#note-text")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text:
            self.dismiss(text)
        else:
            self.query_one("#note-hint", Static).update(
                Text("the note cannot be empty · escape cancels", style="bold red")
            )

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass
class _Step:
    """What one key did, so undo can take it back."""

    kind: str  # 'decide' (accept/reject/change), 'add' or 'skip'
    item: QueueItem  # the item on screen when the key was pressed
    decision: Decision | None  # None for a skip
    dropped: list[QueueItem] = field(default_factory=list)  # items the step settled


class ReviewApp(App[None]):
    """Clear the review queue with the keyboard."""

    TITLE = "papertag review"
    CSS = """
    #paper { height: 1fr; border: round $primary; padding: 0 1; }
    #proposal { height: auto; border: round $accent; padding: 0 1; }
    #others { height: auto; max-height: 12; padding: 0 1; }
    #status { height: 1; padding: 0 1; background: $boost; }
    #title { height: auto; padding: 0 2; }
    HelpScreen, PickerScreen, NoteScreen { align: center middle; }
    #note { width: 90; height: auto; border: thick $accent; background: $surface; padding: 0 1; }
    #help { width: 90; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    #picker { width: 90; height: 24; border: thick $accent; background: $surface; padding: 0 1; }
    #options { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "accept", "Accept"),
        Binding("r", "reject", "Reject"),
        Binding("c", "change", "Change"),
        Binding("n", "add", "Add label"),
        Binding("s", "skip", "Skip"),
        Binding("u", "undo", "Undo"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self, store: Store, queue: list[QueueItem], *, reviewer: str | None = None
    ) -> None:
        super().__init__()
        self.store = store
        self.pending = list(queue)  # pending[0] is on screen
        self.total = len(queue)
        self.reviewer = reviewer or default_reviewer()
        self.taxonomy = load_taxonomy()
        self.history: list[_Step] = []
        self.recorded: list[Decision] = []  # every row this session wrote, undos included

    # -- layout -----------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="status")
        yield Static(id="proposal")
        yield Static(id="title")
        with VerticalScroll(id="paper"):
            yield Static(id="abstract")
        yield Static(id="others")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"reviewer {self.reviewer}"
        self._settle()
        self._show()

    # -- queue ------------------------------------------------------------
    @property
    def current(self) -> QueueItem | None:
        return self.pending[0] if self.pending else None

    @property
    def done(self) -> int:
        return sum(1 for step in self.history if step.kind == "decide")

    def _settle(self) -> list[QueueItem]:
        # An item decided meanwhile (added with `n`, or in another session) needs no decision.
        dropped = []
        while (item := self.current) is not None and is_decided(
            self.store, item.paper_id, item.field, item.label
        ):
            dropped.append(self.pending.pop(0))
        return dropped

    def _show(self) -> None:
        item = self.current
        left = len(self.pending)
        status = self.query_one("#status", Static)
        status.update(
            Text.assemble(
                ("done ", "dim"),
                (str(self.done), "bold green"),
                ("  ·  left ", "dim"),
                (str(left), "bold yellow"),
                (f"  ·  queue {self.total}  ·  press ? for keys", "dim"),
            )
        )
        abstract = self.query_one("#abstract", Static)
        proposal = self.query_one("#proposal", Static)
        others = self.query_one("#others", Static)
        if item is None:
            self._ctx = None
            self.query_one("#title", Static).update(
                Text("The review queue is clear.", style="bold green")
            )
            abstract.update("")
            proposal.update(Text("Nothing left to review here. Press q to quit, u to undo."))
            others.update("")
            return
        # Re-read every time: a decision changes the paper's other labels.
        ctx = self._ctx = paper_context(self.store, item.paper_id)
        title, text, where = self._paper_text(ctx, item)
        self.query_one("#title", Static).update(title)
        abstract.update(text)
        proposal.update(self._proposal(item))
        others.update(self._others(ctx, item))
        self.call_after_refresh(self._scroll_to, where)

    def _scroll_to(self, where: float) -> None:
        # Bring the highlighted evidence into view (its share of the text, roughly its line).
        pane = self.query_one("#paper", VerticalScroll)
        pane.scroll_to(y=max(0, int(where * pane.virtual_size.height) - 2), animate=False)

    def _paper_text(self, ctx: PaperContext, item: QueueItem) -> tuple[Text, Text, float]:
        """Title and abstract with the evidence highlighted, and where in the abstract it is."""
        title = Text(ctx.title, style="bold")
        abstract = Text(ctx.abstract)
        where = 0.0
        if (span := evidence_span(ctx.title, item.evidence)) is not None:
            title.stylize(EVIDENCE_STYLE, *span)
        elif (span := evidence_span(ctx.abstract, item.evidence)) is not None:
            abstract.stylize(EVIDENCE_STYLE, *span)
            where = span[0] / max(len(ctx.abstract), 1)
        abstract.append(f"\n\n{ctx.paper_id}", style="dim")
        return title, abstract, where

    def _proposal(self, item: QueueItem) -> Text:
        text = Text()
        text.append(f"{item.field}: ", style="bold")
        text.append(item.label, style="bold magenta")
        text.append(f"   confidence {item.confidence:.2f}", style="bold")
        text.append(
            f"   ({'runner-up candidate' if item.kind == 'candidate' else 'label'} from "
            f"{item.annotator}/{item.model})",
            style="dim",
        )
        text.append("\n" + self.taxonomy.definition(item.field, item.label), style="italic")
        if item.note:
            text.append(f"\nnote: {item.note}")
        text.append("\nevidence: ", style="dim")
        text.append(item.evidence, style="yellow")
        return text

    def _others(self, ctx: PaperContext, item: QueueItem) -> Text:
        text = Text("Other labels of this paper\n", style="bold")
        for f in FIELDS:
            parts = [
                pl
                for pl in ctx.labels
                if pl.field == f and (pl.field, pl.label) != (item.field, item.label)
            ]
            if not parts:
                continue
            text.append(f"  {f}: ", style="bold")
            for i, pl in enumerate(parts):
                if i:
                    text.append(", ")
                style = {"person": "green", "model": "cyan"}.get(pl.decided_by or "", "dim")
                text.append(pl.label, style=style)
                if pl.confidence is not None:
                    text.append(f" {pl.confidence:.2f}", style="dim")
                if pl.decided_by == "person":
                    text.append(" ✓person", style="green")
                elif pl.kind == "candidate":
                    text.append(" (cand.)", style="dim")
            text.append("\n")
        text.append(
            "  cyan: accepted by the model · green: decided by a person · dim: in doubt", "dim"
        )
        return text

    # -- actions ----------------------------------------------------------
    def _step(self, step: _Step) -> None:
        step.dropped = self._settle()
        self.history.append(step)
        self._show()

    def _record(self, make: Callable[[], Decision]) -> Decision | None:
        """The decision ``make`` records, kept for this session's summary; None (and the
        reason shown) if it was refused."""
        try:
            decision = make()
        except ReviewError as exc:
            self.notify(str(exc), severity="error")
            return None
        self.recorded.append(decision)
        return decision

    def _with_note(
        self, field_name: str, action: str, label: str, then: Callable[[str | None], None]
    ) -> None:
        """``then(note)``: first the person's note if setting ``label`` needs one, else at once."""
        if other_needs_note(field_name, action, label, label, None) is None:
            then(None)
            return

        def noted(note: str | None) -> None:
            if note is not None:
                then(note)

        self.push_screen(
            NoteScreen(f"What is this 'other' {field_name}? (recorded with it)"), noted
        )

    def _decide(self, action: str, new_label: str | None = None, note: str | None = None) -> None:
        item = self.current
        if item is None:
            self.notify("The queue is clear; press q to quit.")
            return
        decision = self._record(
            lambda: decide(
                self.store,
                item,
                action,
                new_label=new_label,
                reviewer=self.reviewer,
                source="app",
                note=note,
            )
        )
        if decision is None:
            return
        self.pending.pop(0)
        self._step(_Step("decide", item, decision))

    def action_accept(self) -> None:
        self._decide("accept")

    def action_reject(self) -> None:
        self._decide("reject")

    def action_change(self) -> None:
        item = self.current
        if item is None:
            self.notify("The queue is clear; press q to quit.")
            return
        choices = [Choice(item.field, i) for i in self.taxonomy.ids(item.field) if i != item.label]

        def chosen(choice: Choice | None) -> None:
            if choice is not None:
                self._with_note(
                    item.field,
                    "change",
                    choice.label,
                    lambda note: self._decide("change", choice.label, note),
                )

        self.push_screen(
            PickerScreen(f"Change {item.field} {item.label!r} to:", choices, self.taxonomy),
            chosen,
        )

    def action_add(self) -> None:
        item = self.current
        if item is None:
            self.notify("The queue is clear; press q to quit.")
            return
        ctx = self._ctx or paper_context(self.store, item.paper_id)
        have = {(pl.field, pl.label) for pl in ctx.labels if pl.decided_by is not None}
        # The current field first: the missing label is most often a sibling of the doubtful one.
        fields = [item.field, *(f for f in FIELDS if f != item.field)]
        choices = [Choice(f, i) for f in fields for i in self.taxonomy.ids(f) if (f, i) not in have]

        def chosen(choice: Choice | None) -> None:
            if choice is not None:
                self._with_note(choice.field, "add", choice.label, lambda note: added(choice, note))

        def added(choice: Choice, note: str | None) -> None:
            decision = self._record(
                lambda: add_label(
                    self.store,
                    item.paper_id,
                    choice.field,
                    choice.label,
                    reviewer=self.reviewer,
                    annotation_id=item.annotation_id,
                    source="app",
                    note=note,
                )
            )
            if decision is None:
                return
            self.notify(f"added {choice.field}: {choice.label}")
            self._step(_Step("add", item, decision))

        self.push_screen(PickerScreen("Add a label to this paper:", choices, self.taxonomy), chosen)

    def action_skip(self) -> None:
        item = self.current
        if item is None:
            return
        # Recorded, though it decides nothing: this session and later ones show the item
        # after everything not skipped.
        decision = self._record(
            lambda: decide(self.store, item, "skip", reviewer=self.reviewer, source="app")
        )
        if decision is None:
            return
        self.pending.append(self.pending.pop(0))
        self._step(_Step("skip", item, decision))

    def action_undo(self) -> None:
        if not self.history:
            self.notify("Nothing to undo in this session.")
            return
        step = self.history[-1]
        if step.decision is not None:
            undone = step.decision.decision_id
            if (
                self._record(
                    lambda: undo_decision(self.store, undone, reviewer=self.reviewer, source="app")
                )
                is None
            ):
                return
        self.history.pop()
        # Undo is last-in first-out, so the queue goes back exactly to how it was.
        self.pending[:0] = step.dropped
        if step.kind == "skip":
            self.pending.pop()
        if step.kind != "add":
            self.pending.insert(0, step.item)
        self._show()
        self.notify(f"undone: {step.kind} {step.item.field} {step.item.label}", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
