"""The states ghetl's records move through, as types, in one place.

An item (a row of `raw_extraction_data`) is `pending` once extracted, `transformed` once its
row is stored, `embedded` once its vector is, or `failed` in the stage named beside it. Each
step of a job shows one circle per stage in the job's status JSON (`idle` -> `running` ->
`finished` or `failed`), and the job one overall state. The tuples are the same values for
code that checks or lists them at run time.
"""

from __future__ import annotations

from typing import Literal, TypeGuard, get_args

ItemStatus = Literal["pending", "transformed", "embedded", "failed"]
Stage = Literal["extraction", "transform", "embedding"]
QueueStage = Literal["transform", "embedding"]
"""The stages that have a queue and workers; extraction runs in the sync."""
StageStatus = Literal["idle", "running", "finished", "failed"]
Overall = Literal["READY", "RUNNING", "FINISHED", "FAILED"]

ITEM_STATUSES: tuple[ItemStatus, ...] = get_args(ItemStatus)
STAGES: tuple[Stage, ...] = get_args(Stage)
QUEUE_STAGES: tuple[QueueStage, ...] = get_args(QueueStage)
STAGE_STATUSES: tuple[StageStatus, ...] = get_args(StageStatus)
OVERALL_STATES: tuple[Overall, ...] = get_args(Overall)


def is_queue_stage(name: str) -> TypeGuard[QueueStage]:
    return name in QUEUE_STAGES
