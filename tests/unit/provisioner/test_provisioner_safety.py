"""The provisioner under bad input and hostile files, through the CLI against moto (in process): one line, the
right exit code, and nothing created, lost or deleted that should not be. Real files and directories throughout;
a read-only directory is a read-only tmpfs when the tests run as root (root ignores permission bits)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner, Result

from provisioner.cli import main
from provisioner.errors import InputError
from provisioner.firmware import PART_SIZE, generate_firmware, generate_firmware_chunks
from provisioner.lock import ManifestLock, lock_path
from provisioner.manifest import journal_path, load_manifest
from provisioner.validation import MAX_STREAM_FILE_SIZE, check_stream_file_size
from tests.unit.provisioner.test_provisioner_helpers import REGION, FakeStreams, fake_aws
from tests.unit.provisioner.test_provisioner_moto import NOTHING, leftovers

FAST = ["--tps", "100000"]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStreams]:
    with fake_aws(monkeypatch) as fake:
        yield fake


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def up(manifest: Path, *extra: str | Path, generate: str = "4KiB") -> Result:
    return run(
        "up", "--stream-id", "fw-test", "--generate", generate, "--bucket", "fw-bucket", "--create-bucket",
        "--create-role", "--manifest", manifest, *FAST, *extra,
    )  # fmt: skip


def error_line(result: Result) -> str:
    """The one line an error prints: no traceback; besides it at most the fleet's progress bar (``things ...``)."""
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    assert all(line.startswith("things ") for line in lines[:-1]), result.output
    return errors[0]


# --- 1/8: sizes ----------------------------------------------------------------------------------------------------


def test_generate_beyond_what_a_stream_can_carry_is_one_line_and_creates_nothing(
    aws_env: FakeStreams, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.json"
    result = up(manifest, generate="1000GiB")
    assert result.exit_code == 2
    line = error_line(result)
    assert line == (
        f"Error: --generate 1000GiB is {1000 * 1024**3} bytes, more than a stream can deliver: at most "
        f"{MAX_STREAM_FILE_SIZE} bytes (98305 blocks of 131072 bytes, GetStream offsets 0..98304)"
    )
    assert not manifest.exists() and not journal_path(manifest).exists() and not lock_path(manifest).exists()
    assert leftovers() == NOTHING


def test_the_size_limit_is_the_last_reachable_block() -> None:
    # GetStream offsets reach block 98304; blocks are at most 128 KiB (device_sim/protocol/limits.py).
    assert MAX_STREAM_FILE_SIZE == 98305 * 131072
    assert check_stream_file_size(MAX_STREAM_FILE_SIZE, "x") == MAX_STREAM_FILE_SIZE
    with pytest.raises(InputError, match="more than a stream can deliver"):
        check_stream_file_size(MAX_STREAM_FILE_SIZE + 1, "x")


def test_generated_in_chunks_is_byte_for_byte_the_whole_image() -> None:
    size = 3 * 1000 + 7
    whole = generate_firmware(size, 7, 2)
    pieces = list(generate_firmware_chunks(size, 7, 2, chunk=1000))
    assert [len(p) for p in pieces] == [1000, 1000, 1000, 7]
    assert b"".join(pieces) == whole


def test_a_file_above_the_threshold_goes_up_in_parts_with_the_same_sha256(aws_env: FakeStreams, tmp_path: Path) -> None:
    size = PART_SIZE + 4096  # two parts: 8 MiB and 4 KiB
    manifest_path = tmp_path / "run.json"
    result = up(manifest_path, generate=str(size))
    assert result.exit_code == 0, result.output
    image = generate_firmware(size, 0, 0)
    record = load_manifest(manifest_path).firmware[0]
    assert (record.size, record.sha256) == (size, hashlib.sha256(image).hexdigest())
    assert record.source == f"generate:size={size},seed=0,index=0"
    assert record.etag.endswith("-2"), record.etag  # S3's multipart ETag: two parts
    s3 = boto3.client("s3", region_name=REGION)
    body = s3.get_object(Bucket="fw-bucket", Key=record.key, VersionId=record.version_id)["Body"].read()
    assert body == image
    assert s3.list_multipart_uploads(Bucket="fw-bucket").get("Uploads", []) == []
    again = up(manifest_path, generate=str(size))  # a resumed run: same content, recorded, present: not sent again
    assert again.exit_code == 0, again.output
    assert len(s3.list_object_versions(Bucket="fw-bucket")["Versions"]) == 1
    assert load_manifest(manifest_path).firmware[0] == record
    assert run("cleanup", "--manifest", manifest_path, *FAST).exit_code == 0
    assert leftovers() == NOTHING


# --- 1/2: output locations, before any AWS call --------------------------------------------------------------------


def test_a_manifest_in_a_missing_directory_is_refused_and_not_created(aws_env: FakeStreams, tmp_path: Path) -> None:
    manifest = tmp_path / "no" / "such" / "run.json"
    result = up(manifest)
    assert result.exit_code == 11
    assert error_line(result) == (
        f"Error: manifest directory {tmp_path / 'no' / 'such'} does not exist: create it first "
        f"(mkdir -p {tmp_path / 'no' / 'such'}) or pass another --manifest"
    )
    assert not (tmp_path / "no").exists()
    assert leftovers() == NOTHING


def test_a_manifest_in_a_read_only_directory_is_refused(
    aws_env: FakeStreams, tmp_path: Path, read_only_dir: Path
) -> None:
    result = up(read_only_dir / "run.json")
    assert result.exit_code == 11
    line = error_line(result)
    assert line.startswith(f"Error: cannot write to the manifest directory {read_only_dir}: ")
    assert line.endswith("make it writable or pass another --manifest")
    assert leftovers() == NOTHING


def test_a_read_only_certs_dir_is_refused_before_the_bucket_role_and_stream(
    aws_env: FakeStreams, tmp_path: Path, read_only_dir: Path
) -> None:
    manifest = tmp_path / "run.json"
    result = up(manifest, "--things", "1", "--certs-dir", read_only_dir, "--mqtt-endpoint", "127.0.0.1:8883")
    assert result.exit_code == 11
    line = error_line(result)
    assert line.startswith(f"Error: cannot write to the certificates directory {read_only_dir}: ")
    assert not manifest.exists()
    assert leftovers() == NOTHING  # before: the S3 object, the role and the stream were made, then a traceback


def test_a_certs_dir_without_parent_is_refused(aws_env: FakeStreams, tmp_path: Path) -> None:
    result = up(tmp_path / "run.json", "--things", "1", "--certs-dir", tmp_path / "missing" / "certs")
    assert result.exit_code == 11
    assert error_line(result).startswith(f"Error: certificates' parent directory {tmp_path / 'missing'} does not")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "run.json").exists()
    assert leftovers() == NOTHING


# --- 1: malformed manifests ----------------------------------------------------------------------------------------


def test_a_manifest_without_run_id_says_it_is_not_one_and_what_to_do(aws_env: FakeStreams, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"schema_version": 1, "region": REGION}))
    result = run("cleanup", "--manifest", path, *FAST)
    assert result.exit_code == 3
    assert error_line(result) == (
        f"Error: manifest {path} is malformed: field 'run_id' is missing: this is not a provisioner manifest; "
        "remove a run without it: `provisioner cleanup --run-id RUN_ID`"
    )


def test_a_manifest_with_a_bad_nested_field_names_it_and_the_run(aws_env: FakeStreams, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert up(path).exit_code == 0
    data = json.loads(path.read_text())
    data["firmware"][0]["size"] = "big"
    path.write_text(json.dumps(data))
    result = run("cleanup", "--manifest", path, *FAST)
    assert result.exit_code == 3
    assert error_line(result) == (
        f"Error: manifest {path} is malformed: field 'firmware[0].size' is 'big', not an integer: restore the "
        f"field, or remove the run without the manifest: `provisioner cleanup --run-id {data['run_id']}`"
    )
    assert len(leftovers()["streams"]) == 1  # nothing was removed on a manifest it could not read


def test_a_json_file_of_something_else_is_not_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "package.json"
    path.write_text('{"name": "x"}')
    result = run("cleanup", "--manifest", path)
    assert result.exit_code == 3
    assert "has no schema_version: it is not a provisioner manifest" in error_line(result)


# --- 5: cleanup deletes only the run's own files -------------------------------------------------------------------


def test_cleanup_refuses_files_the_run_did_not_write(aws_env: FakeStreams, tmp_path: Path) -> None:
    path, certs = tmp_path / "run.json", tmp_path / "certs"
    result = up(path, "--things", "3", "--certs-dir", certs, "--mqtt-endpoint", "127.0.0.1:8883")
    assert result.exit_code == 0, result.output
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "sim-1.cert.pem").write_text("not ours")
    (certs / "sim-1.cert.pem").unlink()
    (certs / "sim-1.cert.pem").symlink_to(outside / "sim-1.cert.pem")  # a symlink out, under the right name
    dotdot = tmp_path / "sim-2.private.key"
    dotdot.write_text("also not ours")
    data = json.loads(path.read_text())
    data["things"][0]["key_path"] = str(precious)
    data["things"][2]["key_path"] = "certs/../sim-2.private.key"
    path.write_text(json.dumps(data))

    result = run("cleanup", "--manifest", path, *FAST)
    assert result.exit_code == 0, result.output
    assert precious.read_text() == "keep me"
    assert (outside / "sim-1.cert.pem").read_text() == "not ours"
    assert dotdot.read_text() == "also not ours"
    refused = [line for line in result.output.splitlines() if line.startswith("refused")]
    assert [re.sub(r"\s+", " ", line.split(":")[0]) for line in refused] == [
        f"refused file {precious}",
        f"refused file {certs / 'sim-1.cert.pem'}",
        f"refused file {tmp_path / 'certs' / '..' / 'sim-2.private.key'}",
    ]
    assert "outside the run's certificates directory" in refused[0] or "not a file the provisioner" in refused[0]
    assert "symbolic link" in refused[1] and "'..'" in refused[2]
    assert "0 not removed, 3 refused (not the run's files)" in result.output
    # the run's own files named correctly are gone; the account is empty
    assert sorted(p.name for p in certs.iterdir()) == ["sim-0.private.key", "sim-1.cert.pem", "sim-2.private.key"]
    assert leftovers() == NOTHING


# --- 6: one run per manifest ---------------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_manifest_is_refused_before_anything(aws_env: FakeStreams, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with ManifestLock(path, command="provisioner up"):
        result = up(path)
        assert result.exit_code == 12
        line = error_line(result)
        assert re.fullmatch(
            rf"Error: manifest {re.escape(str(path))} is in use by pid {os.getpid()} \(provisioner up started at "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\): wait for it to finish \(or stop it\), or use another --manifest",
            line,
        ), line
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
    assert not path.exists()
    assert leftovers() == NOTHING
    assert not lock_path(path).exists()


def test_the_lock_of_a_dead_process_is_taken_over(aws_env: FakeStreams, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_path(path).write_text(json.dumps({"pid": dead.pid, "command": "provisioner up", "started_at": "then"}))
    result = up(path)
    assert result.exit_code == 0, result.output
    assert load_manifest(path).stream is not None
    assert not lock_path(path).exists()  # released (and removed) at the end


def test_a_dry_run_of_a_large_file_plans_a_multipart_upload_and_creates_nothing(
    aws_env: FakeStreams, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.json"
    result = up(manifest, "--dry-run", generate=str(3 * PART_SIZE))
    assert result.exit_code == 0, result.output
    planned = [line.strip().split("(")[0] for line in result.output.splitlines() if line.startswith("  s3.")]
    assert "s3.put_object" not in planned
    start, end = planned.index("s3.create_multipart_upload"), planned.index("s3.complete_multipart_upload")
    assert start < end
    assert "local.upload_parts(parts=3, part_size=8388608, size=25165824)" in result.output
    assert not manifest.exists() and not lock_path(manifest).exists()
    assert leftovers() == NOTHING


def test_a_write_that_fails_later_is_one_line_that_says_to_run_again(tmp_path: Path) -> None:
    from provisioner.certs import write_private_file
    from provisioner.errors import OutputError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError) as caught:
        write_private_file(blocker / "sim-0.private.key", b"key")
    assert caught.value.exit_code == 11
    assert re.fullmatch(
        rf"cannot write {re.escape(str(blocker / 'sim-0.private.key'))}: [^:]+: fix --certs-dir \(writable, space "
        r"left\), then run the same command again \(it resumes\)",
        str(caught.value),
    ), str(caught.value)


def test_cleanup_aborts_an_upload_a_killed_run_left_unfinished(aws_env: FakeStreams, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert up(path).exit_code == 0
    manifest = load_manifest(path)
    assert manifest.bucket is not None
    s3 = boto3.client("s3", region_name=REGION)
    key = f"{manifest.bucket.object_prefix}1/firmware-big.bin"  # what a kill -9 during a multipart upload leaves
    upload = s3.create_multipart_upload(Bucket="fw-bucket", Key=key)
    s3.upload_part(Bucket="fw-bucket", Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * PART_SIZE)
    result = run("cleanup", "--manifest", path, *FAST)
    assert result.exit_code == 0, result.output
    assert f"unfinished upload s3://fw-bucket/{key}" in result.output
    assert leftovers() == NOTHING  # the bucket (created by the run) is gone too


def test_a_failure_after_changes_names_the_run_and_loses_no_certificate(aws_env: FakeStreams, tmp_path: Path) -> None:
    path, certs = tmp_path / "run.json", tmp_path / "certs"
    certs.mkdir()
    (certs / "sim-1.private.key").mkdir()  # in the way: the key of sim-1 cannot be written after AWS made it
    args = ["--things", "2", "--certs-dir", certs, "--mqtt-endpoint", "127.0.0.1:8883"]
    result = up(path, *args)
    assert result.exit_code == 11
    manifest = load_manifest(path)
    line = error_line(result)
    assert line.startswith(f"Error: cannot write {certs / 'sim-1.private.key'}: ")
    assert line.endswith(
        f"then run the same command again (it resumes); run {manifest.run_id} is recorded in {path} (resume: "
        f"`provisioner up --stream-id fw-test --generate 4KiB --bucket fw-bucket --create-bucket --create-role "
        f"--manifest {path} --tps 100000 --things 2 --certs-dir {certs} --mqtt-endpoint 127.0.0.1:8883`; "
        f"remove: `provisioner cleanup --manifest {path}`)"
    ), line
    left = leftovers()
    sim1 = manifest.thing("sim-1")
    assert sim1 is not None and sim1.certificate_id is not None and sim1.key_path is None
    assert sorted(left["certificates"]) == sorted(t.certificate_id for t in manifest.things if t.certificate_id)

    (certs / "sim-1.private.key").rmdir()
    resumed = up(path, *args)
    assert resumed.exit_code == 0, resumed.output
    final = load_manifest(path)
    assert [t.complete for t in final.things] == [True, True]
    assert len(leftovers()["certificates"]) == 2  # the one without a key was retired and replaced
    assert run("cleanup", "--manifest", path, *FAST).exit_code == 0
    assert leftovers() == NOTHING
