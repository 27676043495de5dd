"""A real S3-API server on loopback for tests: moto's server mode (``moto[server]``).

Runs in a thread of the test process (``ThreadedMotoServer``); its buckets live in
moto's in-process state, so :meth:`MotoS3.stop` then :meth:`MotoS3.start` is an
object store that went down and came back with its data, on the same port.
Credentials are checked for shape only; any key pair works.
"""

from __future__ import annotations

import logging
import uuid

from audit_events.objectstore import S3Location
from auditstream.embedded import free_port

ACCESS_KEY = "AKIAAUDITSTREAMTEST"
SECRET_KEY = "test-secret-key-that-must-never-be-logged"


class MotoS3:
    def __init__(self) -> None:
        self.port = free_port()
        self._server: object | None = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def bucket(self, prefix: str = "t") -> str:
        """A new, empty bucket (names are unique: moto's state is per process)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def location(self, bucket: str, prefix: str = "") -> S3Location:
        return S3Location(
            bucket=bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            timeout_seconds=3.0,
            max_retries=1,
        )
