"""The manifest journal: per-thing steps are on disk at once, cheaply, and an interrupted run loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import ManifestError
from provisioner.manifest import Manifest, ManifestStore, ThingRecord, journal_path, load_manifest


def _store(path: Path) -> ManifestStore:
    store = ManifestStore(
        Manifest(run_id="r1", region="us-east-1", account_id="123456789012", created_at="now"),
        path,
        full_save_every=3600.0,  # only the journal, unless flushed
    )
    store.update(store.manifest)
    return store


def test_interrupted_run_is_recovered_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    store = _store(path)
    store.record_thing(ThingRecord(name="sim-0", arn="arn:thing/sim-0"))
    store.record_thing(
        ThingRecord(
            name="sim-0", arn="arn:thing/sim-0", certificate_id="c0", cert_path=tmp_path / "certs" / "sim-0.cert.pem"
        )
    )
    store.record_thing(ThingRecord(name="sim-1", arn="arn:thing/sim-1"))
    # "killed" here: the whole manifest was never rewritten, yet a reader sees every step
    assert "sim-0" not in path.read_text()
    loaded = load_manifest(path)
    assert [t.name for t in loaded.things] == ["sim-0", "sim-1"]
    assert loaded.thing("sim-0").certificate_id == "c0"  # the latest record of a thing wins
    assert loaded.thing("sim-0").cert_path == tmp_path / "certs" / "sim-0.cert.pem"  # paths come back absolute


def test_flush_writes_the_manifest_whole_and_drops_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    store = _store(path)
    store.record_thing(ThingRecord(name="sim-0", arn="a"))
    assert journal_path(path).exists()
    store.flush()
    assert not journal_path(path).exists()
    assert [t.name for t in load_manifest(path).things] == ["sim-0"]
    assert "sim-0" in path.read_text()


def test_a_half_written_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    store = _store(path)
    store.record_thing(ThingRecord(name="sim-0", arn="a"))
    with journal_path(path).open("a") as journal:
        journal.write('{"name": "sim-1", "ar')  # SIGKILL in the middle of a write
    assert [t.name for t in load_manifest(path).things] == ["sim-0"]
    with journal_path(path).open("a") as journal:
        journal.write("\n" + '{"name": "sim-2"}' + "\n")
    with pytest.raises(ManifestError, match="line 2"):
        load_manifest(path)


def test_whole_saves_still_happen_every_so_often(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    store = ManifestStore(
        Manifest(run_id="r1", region="us-east-1", account_id="123456789012", created_at="now"),
        path,
        full_save_every=0.0,
    )
    store.record_thing(ThingRecord(name="sim-0", arn="a"))
    assert not journal_path(path).exists() and "sim-0" in path.read_text()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    store = ManifestStore(
        Manifest(run_id="r1", region="us-east-1", account_id="123456789012", created_at="now"), path, dry_run=True
    )
    store.record_thing(ThingRecord(name="sim-0", arn="a"))
    store.flush()
    assert not path.exists() and not journal_path(path).exists()
    assert store.manifest.thing("sim-0") is not None


def test_whole_writes_are_spaced_by_ten_times_their_own_duration(tmp_path: Path) -> None:
    """A whole write of a big manifest is slow; the next one waits 10 x as long as it took (the journal has every
    step meanwhile), so rewriting a growing manifest cannot take over the run."""
    now = [0.0]

    def clock() -> float:  # every reading is 0.5 s later: each whole write "takes" 0.5 s
        now[0] += 0.5
        return now[0]

    path = tmp_path / "run.json"
    store = ManifestStore(
        Manifest(run_id="r1", region="us-east-1", account_id="123456789012", created_at="now"),
        path,
        full_save_every=1.0,
        clock=clock,
    )
    store.update(store.manifest)
    assert store.full_save_spacing == pytest.approx(5.0)
    for i in range(6):  # 0.5 s apart: 3 s after the whole write, not yet due at 1 s spacing x 10
        store.record_thing(ThingRecord(name=f"sim-{i}", arn=f"arn:thing/sim-{i}"))
    assert "sim-" not in path.read_text() and journal_path(path).exists()  # all in the journal, none whole
    for i in range(6, 12):
        store.record_thing(ThingRecord(name=f"sim-{i}", arn=f"arn:thing/sim-{i}"))
    assert "sim-" in path.read_text()  # past 5 s: written whole again
