"""Sealed segments of the stage become loads: each one `etl_id` in the ledger, by the loader's own code path.

A segment's load is all or nothing, and its fingerprint (every byte) is in the ledger once it has landed: if the
collector dies between the load's commit and marking the segment loaded, the next attempt finds it in the ledger
and only marks it. Loads wait for nobody: the raw log is files that bulk loads and `dbt build` never lock
(warehouse/segment_log.py). The flusher keeps one connection to the raw log for its loads; a load that fails
(Snowflake unreachable, the disk) leaves the segment sealed, the events safe on disk, and its connection is
dropped: the next tick tries again with a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

from postmodern.collect.stage import EventStage
from postmodern.config import Settings
from postmodern.data.load import AlreadyLoaded, LoadError, LoadSummary, load_source
from postmodern.warehouse import RawLog, WarehouseError, connect_log

log = logging.getLogger("postmodern.collect")
TICK_SECONDS = 0.2
LOAD_NICENESS = 10


def load_segments(stage: EventStage, raw_log: RawLog, settings: Settings, on_load=None) -> int:
    """Seal the open segment when due, load every sealed one in order into `raw_log`; the events loaded. Stops at
    the first segment that cannot be loaded now (the warehouse failing), to keep the log in arrival order, and
    raises its error once the outcome is counted."""
    stage.seal(older_than=settings.collect_flush_seconds)
    loaded = 0
    for segment in stage.to_load():
        outcome, summary = "loaded", None
        try:
            summary = load_source(raw_log, settings, segment.path, "events", progress=False)
        except AlreadyLoaded:
            outcome = "repeat"
        except (LoadError, WarehouseError) as error:
            log.error("loading %s failed, to be tried again: %s", segment.path.name, error)
            if on_load:
                on_load("failed", segment.events)
            raise
        if on_load:
            on_load(outcome, segment.events)
        stage.loaded(segment)
        loaded += segment.events
        if isinstance(summary, LoadSummary):
            log.info("%s: %s", segment.path.name, summary.describe().splitlines()[0])
    stage.expire()
    return loaded


class Flusher:
    """`load_segments` every TICK_SECONDS in a thread, until stopped."""

    def __init__(self, stage: EventStage, settings: Settings, on_load=None):
        self.stage, self.settings, self.on_load = stage, settings, on_load
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stage-flusher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        # Loads yield the CPU to acknowledgements: a load may wait, a shopper's request should not (Linux: a
        # thread's own priority; DuckDB runs a one-thread load in this thread).
        if sys.platform == "linux":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICENESS)
        raw_log = None  # one connection for every load, until one fails
        while not self.stopping.wait(TICK_SECONDS):
            try:
                raw_log = raw_log or self._connect()
                load_segments(self.stage, raw_log, self.settings, self.on_load)
            except Exception as error:  # the warehouse, the disk or a bug: the events stay staged, to be tried again
                if not isinstance(error, LoadError | WarehouseError):  # those were said where they happened
                    log.exception("flushing the stage failed")
                if raw_log is not None:
                    with contextlib.suppress(Exception):
                        raw_log.close()
                raw_log = None
        if raw_log is not None:
            raw_log.close()

    def _connect(self) -> RawLog:
        try:
            raw_log = connect_log(self.settings)
        except WarehouseError as error:
            log.error("the raw log cannot be reached, to be tried again: %s", error)
            raise
        # a micro-batch is small: one DuckDB thread, which inherits the flusher's lower priority, leaves the other
        # core to acknowledgements
        raw_log.staging_connection().execute("set threads = 1")
        return raw_log

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
