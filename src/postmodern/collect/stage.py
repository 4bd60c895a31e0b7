"""The collector's stage: a write-ahead log of events on local disk, whose fsync is the acknowledgement.

A writer thread takes every request waiting, checks their events with the loader's rules (one DuckDB query for
the group), drops the event ids it has seen within the dedup window, appends one JSON line per event to the open
segment and fsyncs once for the whole group (group commit), then answers each request. Refused events are staged
too, with their reason: their load puts them in the quarantine. The open segment is sealed (renamed) when it is
old or large enough, and each sealed segment becomes one load (collect/flush.py); once loaded it is kept as
flushed for the dedup window, so that the retry of an event already in the raw log is still recognised.

After a crash (kill -9), `EventStage` truncates the open segment's torn last line (its fsync had not returned:
never acknowledged), seals it, and rebuilds the ids from the segments it keeps.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from postmodern.config import MAX_FIELD_LENGTH
from postmodern.data.load import event_reason_sql
from postmodern.data.sources import EVENT_FIELDS
from postmodern.files import sync_directory

GROUP_MAX_REQUESTS = 256  # requests committed by one fsync, at most
# A group takes what waits, then waits this long for more: checking a group costs 5 to 10 ms here whatever its size
# (DuckDB plans and runs the loader's rules), so under load several requests share it. At 500 requests/s of 100
# events (bench/bench_collect.py), 2 ms held the rate in 6 runs of 6; 1 ms and 3 ms fell behind once in 3, 5 ms in 3 of
# 3 (the groups' waits are latency), 0 in 3 of 3 (groups too small: 2.7 ms of CPU per request against 2.2).
GROUP_WINDOW_SECONDS = 0.002
LIST_FIELDS = ("clicked_skus_hash", "product_skus_hash")  # lists of SKUs in search events, staged as JSON text
MISSING_ID = "missing event id"


@dataclass
class Verdict:
    """What became of a request's events: accepted (durable), duplicates of accepted ones, refused with reasons."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"index", "event_id", "reason"}


@dataclass
class Checked:
    """A group's events as checked, in order: their ids, their lines as staged, their reasons to be refused (None:
    accepted)."""

    ids: list
    lines: list[bytes]
    reasons: list[str | None]


class StageFull(RuntimeError):
    """The stage holds as many events as it may until a load makes room; try again after `retry_after` s."""

    def __init__(self, staged: int, retry_after: float):
        super().__init__(f"the stage holds {staged:,} events not yet loaded")
        self.retry_after = retry_after


@dataclass
class Segment:
    sequence: int
    path: Path
    events: int  # lines: accepted and refused events
    started: float  # wall-clock time of its first event (its file's change time after a restart)


def segment_path(directory: Path, state: str, sequence: int) -> Path:
    return directory / f"{state}-{sequence:012d}.jsonl"


def staged_value(value: object, name: str) -> str | None:
    """A field as the loader reads it: text (numbers as digits, SKU lists as JSON)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} is not text")
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, list) and name in LIST_FIELDS and all(isinstance(item, str) for item in value):
        return json.dumps(value)
    raise ValueError(f"{name} is not text")


class EventStage:
    def __init__(self, directory: Path, segment_events: int, max_events: int, dedup_seconds: float):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_events, self.max_events, self.dedup_seconds = segment_events, max_events, dedup_seconds
        self.lock = threading.Lock()  # the open segment, the sealed list and the counters
        self.requests: queue.Queue = queue.Queue()
        self.checker = duckdb.connect(config={"threads": 1})  # small groups: threads only add their start-up
        # The check is one projection of a table in memory: DuckDB's optimizer has nothing to gain there and costs a
        # group 1.3 ms (of 6.7 for 600 events)
        self.checker.execute("pragma disable_optimizer")
        self.check([])  # DuckDB's first query costs 150 ms: not in a shopper's request
        self.seen: set[str] = set()
        self.sealed: list[Segment] = []
        self.flushed: list[tuple[Segment, float]] = []  # (segment, when it was loaded)
        self.waiting = 0  # events submitted and not yet written
        self._recover()
        self.writer = threading.Thread(target=self._write_groups, name="stage-writer", daemon=True)
        self.writer.start()

    # -- the state on disk ------------------------------------------------------------------------------------

    def _recover(self) -> None:
        by_state: dict[str, list[Path]] = {"open": [], "sealed": [], "flushed": []}
        for path in sorted(self.directory.glob("*-*.jsonl")):
            state = path.name.split("-")[0]
            if state in by_state:
                by_state[state].append(path)
        sequence = 0
        for path in by_state["open"]:  # left by a crash: keep its whole lines, seal it
            truncate_torn_line(path)
            if not path.stat().st_size:
                path.unlink()
                continue
            sealed = segment_path(self.directory, "sealed", int(path.stem.split("-")[1]))
            path.rename(sealed)
            by_state["sealed"].append(sealed)
        for state in ("sealed", "flushed"):
            for path in sorted(by_state[state]):
                number = int(path.stem.split("-")[1])
                sequence = max(sequence, number)
                ids, lines = accepted_ids(path)
                segment = Segment(number, path, lines, path.stat().st_mtime)
                if state == "flushed":
                    self.flushed.append((segment, path.stat().st_mtime))
                else:
                    self.sealed.append(segment)
                self.seen.update(ids)
        self.sealed.sort(key=lambda segment: segment.sequence)
        self._open_segment(sequence + 1)
        self.expire()

    def _open_segment(self, sequence: int) -> None:
        path = segment_path(self.directory, "open", sequence)
        self.open = Segment(sequence, path, 0, 0.0)
        self.handle = path.open("ab")
        sync_directory(self.directory)

    def seal(self, older_than: float = 0.0) -> None:
        """Seal the open segment when it holds events and its first is at least `older_than` s old."""
        with self.lock:
            if not self.open.events or time.time() - self.open.started < older_than:
                return
            self.handle.close()
            sealed = segment_path(self.directory, "sealed", self.open.sequence)
            self.open.path.rename(sealed)
            self.open.path = sealed
            self.sealed.append(self.open)
            self._open_segment(self.open.sequence + 1)

    def to_load(self) -> list[Segment]:
        with self.lock:
            return list(self.sealed)

    def loaded(self, segment: Segment) -> None:
        """The segment is in the raw log: keep it (its ids) for the dedup window."""
        flushed = segment_path(self.directory, "flushed", segment.sequence)
        segment.path.rename(flushed)
        sync_directory(self.directory)
        with self.lock:
            self.sealed.remove(segment)
            segment.path = flushed
            self.flushed.append((segment, time.time()))

    def expire(self) -> None:
        """Forget the segments loaded longer ago than the dedup window, and their ids."""
        now = time.time()
        with self.lock:
            expired = [entry for entry in self.flushed if now - entry[1] >= self.dedup_seconds]
            self.flushed = [entry for entry in self.flushed if now - entry[1] < self.dedup_seconds]
        for segment, _ in expired:
            ids, _ = accepted_ids(segment.path)
            with self.lock:
                self.seen.difference_update(ids)
            segment.path.unlink(missing_ok=True)

    @property
    def staged(self) -> int:
        """Events acknowledged (or being written) and not yet loaded."""
        with self.lock:
            return self.open.events + sum(segment.events for segment in self.sealed) + self.waiting

    @property
    def lag_seconds(self) -> float:
        """How long the oldest event not yet loaded has waited."""
        with self.lock:
            oldest = [segment.started for segment in self.sealed] + ([self.open.started] if self.open.events else [])
        return max(time.time() - min(oldest), 0.0) if oldest else 0.0

    # -- writing ----------------------------------------------------------------------------------------------

    def submit(self, events: list) -> Future:
        """A future of the request's `Verdict`, set once its events are durable; `StageFull` when they cannot be."""
        staged = self.staged
        if staged + len(events) > self.max_events:
            raise StageFull(staged, retry_after=1.0)
        future: Future = Future()
        with self.lock:
            self.waiting += len(events)
        self.requests.put((events, future))
        return future

    def _write_groups(self) -> None:
        while True:
            group = [self.requests.get()]
            closes = time.monotonic() + GROUP_WINDOW_SECONDS
            while len(group) < GROUP_MAX_REQUESTS:
                try:  # what waits already joins, then what comes within the window
                    group.append(self.requests.get_nowait())
                except queue.Empty:
                    if (left := closes - time.monotonic()) <= 0:
                        break
                    try:
                        group.append(self.requests.get(timeout=left))
                    except queue.Empty:
                        break
            try:
                verdicts = self._write(group)
            except BaseException as error:  # the disk failed: no request of the group is acknowledged
                for _, future in group:
                    future.set_exception(error)
            else:
                for (_, future), verdict in zip(group, verdicts, strict=True):
                    future.set_result(verdict)
            finally:
                with self.lock:
                    self.waiting -= sum(len(events) for events, _ in group)

    def _write(self, group: list[tuple[list, Future]]) -> list[Verdict]:
        checked = self.check([event for request, _ in group for event in request])
        accepted_ids = set(checked.ids)
        if checked.reasons.count(None) == len(checked.ids) == len(accepted_ids) and self.seen.isdisjoint(accepted_ids):
            # the usual group: every event accepted, none seen before
            lines, verdicts = checked.lines, [Verdict(accepted=len(request)) for request, _ in group]
        else:
            lines, verdicts, accepted_ids = self._sort_out(group, checked)
        if lines:
            with self.lock:
                if not self.open.events:
                    self.open.started = time.time()
                self.handle.write(b"".join(lines))
                self.handle.flush()
                os.fsync(self.handle.fileno())
                self.open.events += len(lines)
                self.seen.update(accepted_ids)
            if self.open.events >= self.segment_events:
                self.seal()
        return verdicts

    def _sort_out(self, group: list[tuple[list, Future]], checked: Checked) -> tuple[list, list, set]:
        """A group with refused events or duplicates: each request's verdict, the lines to stage (not the
        duplicates'), and the ids accepted."""
        lines, verdicts, accepted_ids = [], [], set()
        position = 0
        for request, _ in group:
            verdict = Verdict()
            for index in range(len(request)):
                event_id, reason = checked.ids[position + index], checked.reasons[position + index]
                if reason is None and (event_id in self.seen or event_id in accepted_ids):
                    verdict.duplicates += 1
                    continue
                lines.append(checked.lines[position + index])
                if reason is None:
                    verdict.accepted += 1
                    accepted_ids.add(event_id)
                else:
                    verdict.rejected.append({"index": index, "event_id": event_id, "reason": reason})
            position += len(request)
            verdicts.append(verdict)
        return lines, verdicts, accepted_ids

    def check(self, events: list) -> Checked:
        """Each event's id, its line as staged, and its reason to be refused or None: the collector's own (an
        object with an event id, fields of text), then the loader's rules, run by DuckDB over the group, which also
        writes the lines of the events it checks. The group's fields go to DuckDB a column at a time (pyarrow
        converts a column of text, or of whole numbers, at once); a column of other values (SKU lists, values
        that are not text) is converted value by value, and an event refused there is staged by Python."""
        reasons = [own_reason(event) for event in events]
        objects = [event if type(event) is dict else {} for event in events]
        ids = [event.get("event_id") for event in objects]
        columns = {
            "event_id": [event_id if reason is None else None for event_id, reason in zip(ids, reasons, strict=True)]
        }
        columns.update((name, [event.get(name) for event in objects]) for name in EVENT_FIELDS)
        arrays = {}
        for name, values in columns.items():
            arrays[name] = text_array(values)
            if arrays[name] is None:  # value by value
                for index, value in enumerate(values):
                    try:
                        values[index] = staged_value(value, name)
                    except ValueError as error:
                        reasons[index] = reasons[index] or str(error)
                        values[index] = None
                arrays[name] = pa.array(values, pa.string())
        # DuckDB reads the table from this local variable, named in the query: registering it would cost the query
        # a view's creation (1.3 ms of a group's 9 here)
        batch = pa.table(arrays)  # noqa: F841
        ruled = self.checker.execute(
            f"select collector_reason, encode(to_json(event) || chr(10)) from (select *, {event_reason_sql()} "
            "as collector_reason from batch) event"
        ).fetchall()
        rules, lines = (list(column) for column in zip(*ruled, strict=True)) if ruled else ([], [])
        if reasons.count(None) < len(reasons):  # some refused before DuckDB's rules: staged as they came
            for index, reason in enumerate(reasons):
                if reason is not None:
                    rules[index], lines[index] = reason, staged_line(events[index], reason)
        return Checked(ids, lines, rules)

    def close(self) -> None:
        with self.lock:
            self.handle.close()


def own_reason(event: object) -> str | None:
    """Why the collector refuses an event before the loader's rules see it (not an object, no event id), or None."""
    if type(event) is not dict:
        return "event is not a JSON object"
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        return MISSING_ID
    return "oversized field" if len(event_id) > MAX_FIELD_LENGTH else None


def text_array(values: list) -> pa.Array | None:
    """A column of text or of whole numbers (as digits) as a pyarrow string array, converted at once; None for any
    other column (a float, a bool, a list or a mix among its values)."""
    try:
        return pa.array(values, pa.string())
    except pa.ArrowException:
        if not all(type(value) is int or value is None for value in values):
            return None
    return pa.array([None if value is None else str(value) for value in values], pa.string())


def staged_line(event: object, reason: str) -> bytes:
    """A refused event as a line of its segment: its id, its fields as text (a value that is not, as JSON), and the
    reason it was refused."""
    if not isinstance(event, dict):
        fields = {"session_id_hash": json.dumps(event)[:MAX_FIELD_LENGTH]}
        event_id = None
    else:
        fields = {}
        for name in EVENT_FIELDS:
            try:
                fields[name] = staged_value(event.get(name), name)
            except ValueError:
                fields[name] = json.dumps(event.get(name))
        event_id = event.get("event_id")
    staged_id = event_id if isinstance(event_id, str) or event_id is None else json.dumps(event_id)
    return orjson.dumps({"event_id": staged_id, **fields, "collector_reason": reason}, option=orjson.OPT_APPEND_NEWLINE)


def accepted_ids(path: Path) -> tuple[set[str], int]:
    """The ids of a segment's accepted events, and its lines."""
    ids, lines = set(), 0
    with path.open("rb") as handle:
        for line in handle:
            lines += 1
            event = orjson.loads(line)
            if event.get("collector_reason") is None:
                ids.add(event["event_id"])
    return ids, lines


def truncate_torn_line(path: Path) -> None:
    """Drop what follows the last newline: a line whose write a crash cut short (never acknowledged)."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with path.open("r+b") as handle:
            handle.truncate(whole)
            os.fsync(handle.fileno())
