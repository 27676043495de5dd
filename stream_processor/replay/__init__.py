"""``auditstream replay``: rebuild the store from the archive and the events topic;
swap it in only if complete.

The phases (numbered apart from the processor's Steps, docs/processor.md):

0. Archive + tail (issue 16): when the archiver's archive exists (``<data
   dir>/archive`` or ``AUDITSTREAM_ARCHIVE_DIR``), every archived record of the
   events topic is replayed first, per partition in (epoch, offset) order: each
   epoch is a history the topic once held (a restarted broker's offsets start
   again at 0 with only the new events). Then the topic itself: from where the
   archive ends when the topic still holds the archive's latest epoch, from its
   beginning when its history restarted since (:func:`archive.epochs.decide`,
   the archiver's own test). Segments are checked against their SHA-256 and
   the manifest chain as they are read.
1. Into a fresh ``events_replay`` collection (same indexes, unique chain index),
   from the beginning of the topic (or where the archive ends) — or, with ``since``,
   after copying the live events received before it: the archive from each
   partition's first record timestamped at or after it, the topic from the
   offsets of that time (``offsets_for_times``) or where the archive ends.
   Records go through the processor's own steps (decode, Step 2; seal + ordered
   insert, Step 5; apply corrections/erasures, Step 6), so documents, seqs,
   hashes, corrections and erasures come out identical. Live ingestion goes on.
2. Resumable: the next offset per partition is saved in ``replay_state`` after
   every batch; a crashed replay continues from there (a batch replayed twice is
   harmless: ids already stored are skipped).
3. Verify the rebuilt chains (hashes, links, signed checkpoints) while live
   writers still run; a broken rebuilt chain is refused at once.
4. Fence: set ``replay_state/fence`` (with a deadline) so live writers pause —
   :class:`~stream_processor.fence.SwapFence` (the processor's Step 4) checks
   it before every write and backs off while it is up — wait a grace period
   for batches already in flight, then catch up to the topic's end offsets
   *taken after the grace period* (they cover every event a live writer could
   have consumed).
5. Coverage, under the fence, before anything is renamed: for every tenant of
   the live store, the rebuilt chain must reach the live head seq with the same
   hash there, hold at least as many events, and verify from where phase 3
   stopped to its end, reaching every signed checkpoint. Otherwise the replay is
   *refused*: the fence is lifted, the live store is untouched, ``events_replay``
   is kept for inspection and :attr:`ReplayResult.refusal` says, in one line,
   what the topic is missing (e.g. it starts at offset N, or rebuilt M of a
   tenant's K events). Nothing ever replaces stored events with fewer.
6. Swap: ``renameCollection(events_replay → events, dropTarget)`` and lift the
   fence (bumping its generation, so writers forget their cached chain heads). A
   live write that was still in flight lands either in the old collection
   (dropped; the replay already holds its events) or in the new one, where its
   ids already exist (skipped) — the unique (tenant, seq) index makes a fork
   impossible. If the replay dies with the fence up, live writers resume at its
   deadline; if the checks outlast the deadline, the replay refuses instead of
   swapping (writers may have resumed).

Modules: :mod:`.source` (the Kafka source: partitions, start and end offsets,
batches below an end), :mod:`.rebuild` (phases 0-2 and the run), :mod:`.swap`
(phases 3-6), :mod:`.result` (what a run did).
"""

from __future__ import annotations

from stream_processor.offsets import true_end_offsets
from stream_processor.replay.rebuild import Progress, Replayer
from stream_processor.replay.result import ReplayResult, store_digest

__all__ = ["Progress", "ReplayResult", "Replayer", "store_digest", "true_end_offsets"]
