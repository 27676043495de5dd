"""The archive of the topics: immutable, compressed, hash-chained segment files.

One concept per module:

- :mod:`.files` — durable writes (fsync of file and directory, publish by rename).
- :mod:`.segment` — the segment format (gzip of NDJSON, one record per line).
- :mod:`.manifest` — the hash-chained manifest, one entry per segment.
- :mod:`.epochs` — noticing that a topic's history restarted.
- :mod:`.archiver` — the service: consume, buffer, close segments, commit.
- :mod:`.reader` — the archived records in order (for replay).
- :mod:`.verify` and :mod:`.status` — ``auditstream archive verify | status``.

See docs/archive.md.
"""
