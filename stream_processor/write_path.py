"""Opening the live processor's write path: Steps 4-7 on the events collection.

The pipeline (stream_processor/pipeline.py) composes the steps; this builds the
ones that need the store: the swap fence (4), the chain writer (5), the
control-event applier (6) and, with a signing key, the checkpoints (7).
``auditstream replay`` builds its own subset (no fence, no checkpoints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import control_keys, load_private_key
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION, REPLAY_STATE_COLLECTION
from stream_processor.chain import ChainWriter, Write, check_layout, ensure_chain_index
from stream_processor.checkpoints import (
    Checkpointer,
    CheckpointHeads,
    Publish,
    ensure_checkpoint_topic,
)
from stream_processor.control import ApplyControls, ControlApplier
from stream_processor.fence import SwapFence
from stream_processor.metrics import ProcessorMetrics

log = logging.getLogger("auditstream.processor.chain")


@dataclass(frozen=True)
class WritePath:
    fence: SwapFence
    write: Write
    controls: ApplyControls
    checkpoint: CheckpointHeads | None  # None: no signing key (chains are not checkpointed)


async def open_write_path(
    settings: AuditSettings,
    collection: AsyncCollection[dict[str, Any]],
    publish: Publish | None,
    metrics: ProcessorMetrics | None = None,
) -> WritePath:
    """Unique chain index, fence, writer, control events, checkpoints if keyed.

    Raises :class:`~stream_processor.chain.OldLayout` when the store still needs
    ``auditstream migrate-ids``.
    """
    await check_layout(collection)
    await ensure_chain_index(collection)
    database = collection.database
    checkpoint = None
    if settings.checkpoint_signing_key is not None and publish is not None:
        await ensure_checkpoint_topic(settings)
        checkpointer = Checkpointer(
            load_private_key(settings.checkpoint_signing_key.get_secret_value()),
            publish,
            database[CHECKPOINTS_COLLECTION].with_options(write_concern=collection.write_concern),
            every_events=settings.checkpoint_every_events,
            every_seconds=settings.checkpoint_every_seconds,
            metrics=metrics,  # checkpoint age and failures (H7, issue 21 alerts)
        )
        checkpoint = CheckpointHeads(checkpointer, collection)
    else:
        log.warning("AUDITSTREAM_CHECKPOINT_SIGNING_KEY is not set: chains are not checkpointed")
    writer = ChainWriter(collection)
    # Control public keys by key id: only authentic control events are applied.
    return WritePath(
        fence=SwapFence(database[REPLAY_STATE_COLLECTION], writer.forget_heads),
        write=Write(writer, metrics),
        controls=ApplyControls(ControlApplier(collection, control_keys(settings))),
        checkpoint=checkpoint,
    )
