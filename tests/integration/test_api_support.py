"""Old import path of the API suites' helpers, kept only until ``test_moves.sh``
rewrites the last imports: the helpers live in ``tests/helpers.py`` and the
``live``/``http``/``db`` fixtures in ``tests/integration/conftest.py``."""

from __future__ import annotations

from tests.helpers import T0 as T0
from tests.helpers import LiveApi as LiveApi
from tests.helpers import QueryCounter as QueryCounter
from tests.helpers import Store as Store
from tests.helpers import bearer as bearer
from tests.helpers import make_event as make_event
from tests.helpers import serve_api as serve_api
