"""S3Source against the emulator: what verification reads, and the cache that spares a fleet the thread hops."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from device_sim.device.verify import S3Source, SourceError, block_crcs
from device_sim.fleet.plan import read_target
from local_iot.runner import LocalIot
from provisioner.manifest import load_manifest
from tests.e2e.test_fleet import provision

pytestmark = pytest.mark.e2e


def test_a_source_locates_fetches_once_and_answers_from_its_cache_without_blocking(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest_path = provision(local_iot, tmp_path, monkeypatch, things=1, stream="srccache", size="20KiB")
    target, _ = read_target(manifest_path)
    manifest = load_manifest(manifest_path)
    source = S3Source()

    # Nothing known yet: the loop-side questions say so instead of blocking.
    assert not source.prepared(target.stream_id)
    assert source.fetched(target.stream_id, 0) is None

    source.prepare(target.stream_id)
    assert source.prepared(target.stream_id)
    assert not source.prepared("some-other-stream")
    assert source.fetched(target.stream_id, 0) is None  # located, not fetched

    location = source.locate(target.stream_id, 0)
    assert (location.bucket, location.key) == (manifest.firmware[0].bucket, manifest.firmware[0].key)
    obj = source.fetch(location)
    assert obj.size == 20 * 1024 and obj.sha256 == manifest.firmware[0].sha256
    assert hashlib.sha256(obj.data).hexdigest() == obj.sha256
    assert source.fetched(target.stream_id, 0) is obj  # the cache every later device reads in the loop
    assert source.source_crcs(obj, 4096) == block_crcs(obj.data, 4096)

    with pytest.raises(SourceError, match="no file id 7"):
        source.locate(target.stream_id, 7)
