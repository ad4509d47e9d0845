"""The Literal types of ghetl.records are the values the rest of ghetl checks at run time."""

from __future__ import annotations

import ghetl
from ghetl import records
from ghetl.pipeline import jobs
from ghetl.queue import broker
from ghetl.status import events as status
from ghetl.store import db


def test_the_run_time_tuples_are_the_literal_types_values() -> None:
    assert records.ITEM_STATUSES == ("pending", "transformed", "embedded", "failed")
    assert records.STAGES == status.STAGES == ("extraction", "transform", "embedding")
    assert records.QUEUE_STAGES == broker.STAGE_QUEUES == ("transform", "embedding")
    assert records.STAGE_STATUSES == ("idle", "running", "finished", "failed")
    assert records.OVERALL_STATES == db.OVERALL_STATES == ("READY", "RUNNING", "FINISHED", "FAILED")


def test_every_item_status_is_counted_and_a_new_job_starts_idle() -> None:
    assert set(records.ITEM_STATUSES) <= set(jobs.zero_counts())
    assert db.raw_extraction_data.c.status.default.arg == "pending"
    circles = {step[stage] for step in jobs.initial_status()["steps"].values() for stage in records.STAGES}
    assert circles <= set(records.STAGE_STATUSES) and jobs.initial_status()["overall"] in records.OVERALL_STATES


def test_is_queue_stage() -> None:
    assert records.is_queue_stage("transform") and records.is_queue_stage("embedding")
    assert not records.is_queue_stage("extraction") and not records.is_queue_stage("Transform")


def test_the_public_names_are_the_lazy_exports() -> None:
    assert ghetl.__all__ == sorted(ghetl._EXPORTS)
