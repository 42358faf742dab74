"""One retry layer for object storage: ours (`sen12ms_common.storage.s3.retrying`); botocore's and s3fs's own
retries are off, so a request is tried exactly as often as the `RetryPolicy` says, whatever
AWS_MAX_ATTEMPTS says."""

from __future__ import annotations

import os
import time

import pytest
from s3server import FaultProxy, WeedServer, fault_proxy  # noqa: F401  (fixture)

from sen12ms_common.errors import StorageUnavailableError
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.files import RetryPolicy

pytestmark = pytest.mark.slow  # a real S3 server behind a fault-injecting proxy

FAST = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2)


def _prefix(server: WeedServer) -> str:
    return f"s3://{server.bucket}/retry-layer-{os.getpid()}-{time.monotonic_ns()}"


@pytest.mark.parametrize("aws_max_attempts", [None, "10"])
def test_a_failing_read_is_tried_exactly_as_often_as_the_policy_says(
        fault_proxy: FaultProxy, s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        aws_max_attempts: str | None) -> None:
    if aws_max_attempts is None:
        monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    else:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", aws_max_attempts)  # botocore's variable: no effect
    url = storage.join(_prefix(s3_server), "busy.bin")
    storage.write_bytes(url, b"payload")
    fault_proxy.fail(503, times=100)
    with pytest.raises(StorageUnavailableError) as err:
        storage.open_read(url, retry=FAST)
    assert fault_proxy.failures == FAST.attempts  # not multiplied by botocore's or s3fs's attempts
    assert str(err.value).startswith(f"{url}: server error 503 SlowDown (injected by the test proxy); "
                                     f"gave up after {FAST.attempts} attempts")


def test_writes_and_listings_are_retried_by_the_same_layer(fault_proxy: FaultProxy,  # noqa: F811
                                                           s3_server: WeedServer) -> None:
    prefix = _prefix(s3_server)
    url = storage.join(prefix, "part.bin")
    fault_proxy.fail(503, times=2)  # the PUT of a small file, refused twice
    storage.write_bytes(url, b"written after two refusals")
    assert fault_proxy.failures == 2
    fault_proxy.fail(500, times=2)
    assert storage.listdir(prefix) == ["part.bin"]
    assert fault_proxy.failures == 4
    with storage.open_read(url) as f:
        assert f.read() == b"written after two refusals"
