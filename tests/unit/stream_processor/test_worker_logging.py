"""The worker's logging: Faust's terminal spinner must not turn on every library's debug log."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from stream_processor.worker import faust_worker

pytestmark = pytest.mark.unit


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_worker_builds_no_debug_records_of_its_libraries(root_logging: None) -> None:
    app = faust.App("logging-test", broker="memory://", store="memory://")
    worker = faust_worker(app, "warn")
    worker._setup_logging()  # what the worker does on its first start
    # The spinner's handler used to set the root logger to DEBUG: every debug call of
    # pymongo (four per store command), aiokafka and redis built and handled a record.
    for name in ("pymongo.command", "aiokafka", "redis", "auditstream.processor"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    assert logging.getLogger("auditstream.processor").isEnabledFor(logging.WARNING)
