"""Carries out the shift plan's actions: weight writes off the evaluation path, persistence, news."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from exporter.alerting.outbox import Notification
from exporter.errors import CorruptStateFile, Refused
from exporter.route53.actions import Action, Notify, SetWeights
from exporter.route53.model import Observation, ShiftSettings
from exporter.route53.plan import ShiftPlan
from exporter.route53.read import RecordSpec, Route53Error
from exporter.route53.record import ShiftRecord
from exporter.route53.words import dry
from exporter.route53.write import Route53Writer
from exporter.store.calls import Inline, StoreCalls
from exporter.store.documents import Document, DocumentStore, LocalDocuments
from exporter.tasks import Supervisor

log = logging.getLogger("cutover.shift")

CONTROLS = ("pause", "resume", "approve", "rollback")


class ShiftRunner:
    """Owns the plan, its state document and the writer; the daemon feeds it observations.

    The plan is the `shift` document of `documents` (state_dir's shift.json, or the HA table;
    `state_path` names a file directly), through `calls`: a store called in a thread is not
    loaded here but by `take_over`, when this replica takes the lease, and its saves happen in
    the background (the owed news wait for them).

    Writes run in their own tasks so that an evaluation never waits for Route53 (a rollback
    must be decided while a step still waits for INSYNC); the writer serialises changes per
    hosted zone. The plan is saved before anything is written, so a restart knows a change
    was in flight, and with the notifications its actions owe, so that a crash between the
    save and the outbox loses no message: `settle` hands them over (again after a restart).

    `render` words a Notify for Slack (no notifications without Slack); `relay` hands owed
    notifications to the outbox and returns the keys it holds on disk.

    `compare_and_swap` (set when `ha` is configured; the daemon may flip it on reload) writes
    each step as a compare-and-swap batch naming the epoch `epoch()` returns at write time (the
    lease's; None until a lease is wired in). A lost race (StaleWrite) is a failed change like
    any other: the plan reads Route53 before deciding again, never sends the same batch.

    `may_act` (the HA lease's, when `ha` is configured) gates everything that changes the
    migration: a replica that does not lead neither steps the plan nor takes a person's
    command, and a write decided while it led is not sent once it no longer does.
    """

    def __init__(
        self,
        settings: ShiftSettings,
        record: RecordSpec,
        *,
        state_path: Path | None,
        endpoint_url: str | None,
        render: Callable[[Notify], list[Notification]],
        relay: Callable[[list[Notification], bool], set[str]],
        tasks: Supervisor,
        writer: Route53Writer | None = None,
        compare_and_swap: bool = False,
        epoch: Callable[[], int | None] | None = None,
        may_act: Callable[[], bool] | None = None,
        documents: DocumentStore | None = None,
        calls: StoreCalls | None = None,
    ) -> None:
        self.settings = settings
        self.record = record
        if documents is None and state_path is not None:
            documents = LocalDocuments(state_path.parent)
        name = state_path.stem if state_path is not None else "shift"
        self.document: Document[ShiftRecord] | None = (
            Document(
                documents,
                name,
                ShiftRecord,
                calls or Inline(),
                what="the shift plan",
                on_saved=lambda _tag: self.settle(),
                logger=log,
            )
            if documents is not None
            else None
        )
        self._render = render
        self._relay = relay
        self._tasks = tasks
        self.writer = writer or Route53Writer(endpoint_url=endpoint_url, dry_run=settings.dry_run)
        self.compare_and_swap = compare_and_swap
        self._epoch = epoch
        self._may_act = may_act or (lambda: True)
        self.changes: dict[str, int] = {}
        self.last_change: float | None = None
        self.last_rollback: float | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.plan = self._load()

    def _build(self, record: ShiftRecord) -> ShiftPlan:
        return ShiftPlan.from_record(record, self.settings, time.time())

    def _load(self) -> ShiftPlan:
        doc = self.document
        if doc is None or doc.deferred:
            return ShiftPlan(self.settings)  # in the table: loaded by take_over
        try:
            plan = doc.load_now(self._build, time.time())
        except CorruptStateFile as exc:
            log.error("shift state unreadable, starting the plan afresh: %s", exc)
            return ShiftPlan(self.settings)
        if plan is None:
            return ShiftPlan(self.settings)
        log.info("shift plan loaded: %s", plan.status(time.time()).state.value)
        return plan

    async def take_over(self) -> None:
        """The plan as its store has it now (this replica takes the lease; the previous leader
        may have moved it). Raises OSError when the store cannot be read; an unreadable plan
        is set aside and a new one started."""
        if self.document is None:
            return
        try:
            plan = await self.document.load(self._build, time.time())
        except CorruptStateFile as exc:
            log.error("shift state unreadable, starting the plan afresh: %s", exc)
            plan = None
        self.plan = plan if plan is not None else ShiftPlan(self.settings)
        log.info("shift plan loaded: %s", self.plan.status(time.time()).state.value)

    def save(self) -> None:
        """Save the plan, only while this replica acts (a follower's plan is not the
        migration's); a failure is logged by the document and the plan goes on in memory."""
        if self.document is None or not self._may_act():
            return
        self.document.save(self.plan.record(), self._epoch() if self._epoch is not None else None)

    # -- driving ----------------------------------------------------------------------------

    def evaluate(self, now: float, observation: Observation) -> None:
        if not self._may_act():
            return  # the leader steps the plan; this replica watches
        self.perform(self.plan.step(now, observation))

    def control(self, action: str, who: str, reason: str | None = None) -> str:
        """A person's word (pause, resume, approve, rollback); raises Refused when it does not apply.

        In a dry run the answer, and a refusal's text, start with "DRY RUN:".
        """
        now = time.time()
        text = reason or f"{action} by {who}"
        if not self._may_act():
            raise Refused(
                "this replica does not lead the migration (ha): send the command to the leader "
                "(cutover_ha_leader == 1)"
            )
        try:
            if action == "pause":
                actions = self.plan.pause(now, text)
            elif action == "resume":
                actions = self.plan.resume(now, text)
            elif action == "approve":
                actions = self.plan.approve(now)
            elif action == "rollback":
                actions = self.plan.rollback(now, text)
            else:
                raise Refused(f"unknown action {action!r}: use one of {', '.join(CONTROLS)}")
        except Refused as exc:
            if self.settings.dry_run:
                raise Refused(dry(str(exc))) from None
            raise
        log.info("shift: %s by %s", action, who)
        self.perform(actions)
        status = self.plan.status(now)
        answer = status.why or status.state.value
        return dry(answer) if self.settings.dry_run else answer

    def perform(self, actions: list[Action]) -> None:
        if not actions:
            return
        for action in actions:
            if isinstance(action, Notify):
                log.info("shift: %s", action.text)
                self.plan.owed.extend(self._render(action))
        self.save()
        self.settle()
        for action in actions:
            if isinstance(action, SetWeights):
                self._spawn_write(action)

    def settle(self, doubtful: bool = False) -> None:
        """Hand the notifications the plan owes to the outbox; forget those it holds.

        `doubtful` at start-up: they may have reached Slack just before a crash. Not while the
        plan's save is under way: the news never reaches the outbox before its state is saved.
        """
        if not self.plan.owed or not self._may_act():
            return
        if self.document is not None and self.document.busy:
            return  # settled again once saved
        held = self._relay(self.plan.owed, doubtful)
        if held:
            self.plan.owed = [n for n in self.plan.owed if n.key not in held]
            self.save()

    def _spawn_write(self, action: SetWeights) -> None:
        task = self._tasks.spawn(self._write(action), f"shift-write-{action.seq}", "shift-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, action: SetWeights) -> None:
        what = "rollback" if action.rollback else "step"
        log.info(
            "shift: %s %s to %s (%s)%s",
            what,
            self.record.describe(),
            ", ".join(f"{p}={w}" for p, w in action.weights.items()),
            action.reason,
            " [dry run: nothing is written]" if self.settings.dry_run else "",
        )
        try:
            if not self._may_act():
                raise Route53Error("other", "this replica lost the lease (ha): nothing written")
            # a dry run wrote nothing before either: Route53 still holds the real weights, not
            # the ones the plan pretends it wrote, so there is nothing to compare them with
            expected = None if self.settings.dry_run else action.expected
            cas = self.compare_and_swap
            result = await self.writer.apply_weights(
                self.record,
                action.weights,
                expected=expected,
                comment=action.reason,
                compare_and_swap=cas,
                epoch=self._epoch() if cas and self._epoch is not None else None,
            )
        except Route53Error as exc:
            self.changes[exc.reason] = self.changes.get(exc.reason, 0) + 1
            log.warning("shift: %s to %g%% failed: %s", what, action.share, exc)
            follow = self.plan.change_failed(time.time(), action.seq, str(exc))
        except ValueError as exc:
            self.changes["invalid"] = self.changes.get("invalid", 0) + 1
            log.error("shift: %s to %g%% refused: %s", what, action.share, exc)
            follow = self.plan.change_failed(time.time(), action.seq, str(exc))
        else:
            result_label = "dry_run" if result.dry_run else "ok"
            self.changes[result_label] = self.changes.get(result_label, 0) + 1
            now = time.time()
            self.last_change = now
            if action.rollback:
                self.last_rollback = now
            follow = self.plan.change_applied(now, action.seq)
        self.save()
        self.perform(follow)

    async def aclose(self) -> None:
        await self._tasks.stop(list(self._writes))
        self.save()
        if self.document is not None:
            await self.document.flush(timeout=5.0)
            await self.document.aclose()
        self.writer.close()
