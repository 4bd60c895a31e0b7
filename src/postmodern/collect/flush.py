"""Sealed segments of the stage become loads: each one `etl_id` in the ledger, by the loader's own code path.

A segment's load is all or nothing, and its fingerprint (every byte) is in the ledger once it has landed: if the
collector dies between the load's commit and marking the segment loaded, the next attempt finds it in the ledger
and only marks it. Loads wait for nobody: the raw log is files that bulk loads and `dbt build` never lock
(warehouse/segment_log.py); a load that fails (Snowflake unreachable, the disk) leaves the segment sealed, to be
tried again on the next tick, the events safe on disk.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from postmodern.collect.stage import EventStage
from postmodern.config import Settings
from postmodern.data.load import AlreadyLoaded, LoadError, LoadSummary, load_source
from postmodern.warehouse import WarehouseError, connect_log

log = logging.getLogger("postmodern.collect")
TICK_SECONDS = 0.2
LOAD_NICENESS = 10


def load_segments(stage: EventStage, settings: Settings, on_load=None) -> int:
    """Seal the open segment when due, load every sealed one in order; the events loaded. Stops at the first
    segment that cannot be loaded now (the warehouse failing), to keep the log in arrival order."""
    stage.seal(older_than=settings.collect_flush_seconds)
    loaded = 0
    for segment in stage.to_load():
        outcome, summary = "loaded", None
        try:
            raw_log = connect_log(settings)
            # a micro-batch is small: one DuckDB thread, which inherits this thread's lower priority, leaves the
            # other core to acknowledgements
            raw_log.staging_connection().execute("set threads = 1")
            try:
                summary = load_source(raw_log, settings, segment.path, "events", progress=False)
            finally:
                raw_log.close()
        except AlreadyLoaded:
            outcome = "repeat"
        except (LoadError, WarehouseError) as error:
            log.error("loading %s failed, to be tried again: %s", segment.path.name, error)
            outcome = "failed"
        if on_load:
            on_load(outcome, segment.events)
        if outcome == "failed":
            break
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
        while not self.stopping.wait(TICK_SECONDS):
            try:
                load_segments(self.stage, self.settings, self.on_load)
            except Exception:  # a bug or the disk: say so, keep the events staged, try again
                log.exception("flushing the stage failed")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
