"""Provisioner building blocks without AWS: validation, sizes, firmware images, pacing, error translation,
manifest round trip, certificates and key files, local-iot.json."""

from __future__ import annotations

import datetime
import hashlib
import json
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.certs import (
    AMAZON_ROOT_CA1_SHA256,
    amazon_root_ca1,
    issue_device_certificate,
    load_ca,
    write_private_file,
)
from provisioner.errors import (
    AccessDenied,
    AlreadyExists,
    AwsError,
    CredentialsError,
    InputError,
    ManifestError,
    NotFound,
    Throttled,
    translate_botocore_error,
    translate_client_error,
)
from provisioner.firmware import generate_firmware, plan_sources
from provisioner.local import read_local_config
from provisioner.manifest import (
    BucketRecord,
    FirmwareObject,
    Manifest,
    MqttEndpoint,
    StreamFileRecord,
    StreamRecord,
    ThingRecord,
    load_manifest,
    new_run_id,
    save_manifest,
)
from provisioner.pacing import Backoff, TokenBucket
from provisioner.validation import (
    check_description,
    check_file_ids,
    check_role_arn,
    check_run_id,
    check_stream_id,
    check_tags,
    check_thing_prefix,
    parse_host_port,
    parse_size,
)

# --- validation (docs/protocol.md section 1) ----------------------------------------------------------------


@pytest.mark.parametrize("stream_id", ["a", "fw-test", "A_b-9", "x" * 128])
def test_valid_stream_ids(stream_id: str) -> None:
    assert check_stream_id(stream_id) == stream_id


@pytest.mark.parametrize("stream_id", ["", "fw test", "fw/test", "fw.test", "x" * 129, "ü"])
def test_invalid_stream_ids(stream_id: str) -> None:
    with pytest.raises(InputError, match="invalid stream id"):
        check_stream_id(stream_id)


def test_description_limits() -> None:
    assert check_description("d" * 2028)
    with pytest.raises(InputError, match="2029 characters"):
        check_description("d" * 2029)
    with pytest.raises(InputError, match="control"):
        check_description("line\nbreak")


def test_file_ids() -> None:
    check_file_ids(list(range(50)))
    check_file_ids([255, 0])
    with pytest.raises(InputError, match="51 files"):
        check_file_ids(list(range(51)))
    with pytest.raises(InputError, match=r"duplicate file ids \[3\]"):
        check_file_ids([3, 1, 3])
    with pytest.raises(InputError, match="out of range"):
        check_file_ids([256])
    with pytest.raises(InputError, match="at least one file"):
        check_file_ids([])


def test_role_arn_and_tags_and_run_id() -> None:
    assert check_role_arn("arn:aws:iam::123456789012:role/r")
    for bad in ["arn:aws:iam::1234:role/r", "role/r", "arn:aws:iam::123456789012:user/u"]:
        with pytest.raises(InputError, match="invalid role ARN"):
            check_role_arn(bad)
    assert check_tags({"k": "v"}) == [{"Key": "k", "Value": "v"}]
    with pytest.raises(InputError, match="tag key"):
        check_tags({"aws:x": "v"})
    with pytest.raises(InputError, match="257"):
        check_tags({"k": "v" * 257})
    assert check_run_id(new_run_id(datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))).startswith(
        "20250102T030405Z-"
    )
    with pytest.raises(InputError):
        check_run_id("has space")


def test_thing_prefix() -> None:
    assert check_thing_prefix("sim", 3) == "sim"
    with pytest.raises(InputError, match="invalid thing name"):
        check_thing_prefix("bad/prefix", 1)
    with pytest.raises(InputError, match="invalid thing name"):
        check_thing_prefix("p" * 127, 10)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1MiB", 1048576), ("512KiB", 524288), ("1000000", 1000000), ("1.5MB", 1500000), ("4k", 4000), ("2 MiB", 2 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1XB", "-1", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_size(text)


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:8883") == ("127.0.0.1", 8883)
    assert parse_host_port("example.com") == ("example.com", 8883)
    assert parse_host_port("[::1]:1234") == ("::1", 1234)
    for bad in ["host:port", "host:0", ":8883"]:
        with pytest.raises(InputError, match="MQTT endpoint"):
            parse_host_port(bad)


# --- firmware sources -------------------------------------------------------------------------------------------


def test_generated_firmware_is_deterministic_and_documented() -> None:
    image = generate_firmware(1 << 20, 7)
    assert len(image) == 1 << 20
    assert image == hashlib.shake_256(b"iot-stream-sim firmware:7:0").digest(1 << 20)
    assert generate_firmware(1000, 7)[:100] == image[:100]  # a prefix of the same stream
    assert generate_firmware(1000, 8) != generate_firmware(1000, 7)
    assert generate_firmware(1000, 7, 1) != generate_firmware(1000, 7, 0)


def test_plan_sources_assigns_ids(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"a")
    b = tmp_path / "b.bin"
    b.write_bytes(b"b")
    sources = plan_sources([str(a), f"9={b}"], ["1KiB", "2KiB"], seed=3)
    assert [(s.file_id, s.name) for s in sources] == [
        (0, "firmware-1024-seed3-0.bin"),
        (1, "firmware-2048-seed3-1.bin"),
        (2, "a.bin"),
        (9, "b.bin"),
    ]
    assert sources[3].read() == b"b"
    assert sources[1].source == "generate:size=2048,seed=3,index=1"


def test_plan_sources_rejects(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        plan_sources([str(tmp_path / "missing.bin")], [], 0)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="duplicate file ids"):
        plan_sources([f"0={f}", f"0={f}"], [], 0)
    with pytest.raises(InputError, match="51 files"):
        plan_sources([], ["1KiB"] * 51, 0)


# --- pacing -----------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_spaces_calls() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(31):
        bucket.acquire()
        times.append(clock.now)
    assert times[0] == 0.0
    assert times[-1] == pytest.approx(3.0)
    # never more than 10 calls in any 1-second window (AWS's limit is ~15)
    assert all(times[i + 10] - times[i] >= 1.0 - 1e-9 for i in range(len(times) - 10))


def test_token_bucket_refills_while_idle() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert bucket.acquire() == 0.0
    assert bucket.acquire() == pytest.approx(0.2)
    clock.now += 10
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_backoff_is_bounded() -> None:
    backoff = Backoff(attempts=6, first=1.0, cap=4.0)
    assert list(backoff.delays()) == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.total == 15.0


# --- the error boundary -----------------------------------------------------------------------------------------


def _client_error(code: str, message: str = "msg", status: int = 400, **extra: str) -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}, **extra}
    return ClientError(response, "Op")  # type: ignore[arg-type]


def test_already_exists_says_what_to_do() -> None:
    err = translate_client_error(
        _client_error("ResourceAlreadyExistsException", "exists", resourceId="fw"),
        service="iot",
        operation="create_stream",
        api_name="CreateStream",
        params={},
    )
    assert isinstance(err, AlreadyExists)
    assert err.details == {"resourceId": "fw"}
    assert "use `provisioner stream update` or another --stream-id" in str(err)
    assert err.exit_code == 5
    assert "\n" not in str(err)


def test_access_denied_names_the_permission() -> None:
    err = translate_client_error(
        _client_error("AccessDeniedException", status=403),
        service="iot",
        operation="create_stream",
        api_name="CreateStream",
        params={"roleArn": "arn:aws:iam::1:role/r", "tags": [{"Key": "k", "Value": "v"}]},
    )
    assert isinstance(err, AccessDenied)
    assert "iot:CreateStream" in str(err)
    assert "iam:PassRole on arn:aws:iam::1:role/r" in str(err)
    assert "iot:TagResource" in str(err)
    s3 = translate_client_error(
        _client_error("AccessDenied", status=403),
        service="s3",
        operation="list_object_versions",
        api_name="ListObjectVersions",
        params={},
    )
    assert "s3:ListBucketVersions" in str(s3)
    expired = translate_client_error(
        _client_error("ExpiredToken"), service="sts", operation="get_caller_identity", api_name="X", params={}
    )
    assert "refresh them" in str(expired)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("ResourceNotFoundException", NotFound),
        ("NoSuchEntity", NotFound),
        ("404", NotFound),
        ("ThrottlingException", Throttled),
        ("SlowDown", Throttled),
        ("InvalidRequestException", AwsError),
    ],
)
def test_error_classes(code: str, cls: type[AwsError]) -> None:
    err = translate_client_error(_client_error(code), service="iot", operation="x", api_name="X", params={})
    assert type(err) is cls
    assert err.code == code


def test_credentials_error() -> None:
    err = translate_botocore_error(NoCredentialsError(), service="sts", operation="get_caller_identity")
    assert isinstance(err, CredentialsError)
    assert "--profile" in str(err)
    assert err.exit_code == 9


# --- manifest ---------------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path) -> Manifest:
    certs = tmp_path / "certs"
    return Manifest(
        run_id="r1",
        region="eu-west-1",
        account_id="111122223333",
        created_at="2025-01-01T00:00:00Z",
        aws_endpoint_url=None,
        mqtt=MqttEndpoint(host="a.iot", port=8883, ca_path=certs / "AmazonRootCA1.pem"),
        certs_dir=certs,
        bucket=BucketRecord(name="b", created=True, object_prefix="iot-stream-sim/r1/"),
        firmware=(
            FirmwareObject(
                file_id=0, bucket="b", key="k", version_id="v", size=3, sha256="00", etag="e", source="file:/x"
            ),
        ),
        stream=StreamRecord(
            stream_id="s",
            stream_arn="arn:s",
            version=2,
            description="d",
            role_arn="arn:r",
            files=(StreamFileRecord(file_id=0, bucket="b", key="k", version_id="v"),),
        ),
        things=(
            ThingRecord(
                name="sim-0",
                arn="arn:t",
                certificate_id="c",
                certificate_arn="arn:c",
                cert_path=certs / "sim-0.cert.pem",
                key_path=Path("/elsewhere/sim-0.private.key"),
                policy_attached=True,
                principal_attached=True,
            ),
            ThingRecord(name="sim-1", arn="arn:t1"),
        ),
    )


def test_manifest_round_trip_with_relative_paths(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    path = tmp_path / "run.json"
    save_manifest(manifest, path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert data["things"][0]["cert_path"] == "certs/sim-0.cert.pem"
    assert data["things"][0]["key_path"] == "/elsewhere/sim-0.private.key"
    assert data["mqtt"]["ca_path"] == "certs/AmazonRootCA1.pem"
    loaded = load_manifest(path)
    assert loaded == manifest
    assert loaded.thing("sim-0") is not None and loaded.thing("sim-0").complete  # type: ignore[union-attr]
    assert loaded.thing("sim-1") is not None and not loaded.thing("sim-1").complete  # type: ignore[union-attr]
    assert not list(tmp_path.glob(".run.json.*")), "no temporary file left behind"


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 99}')
    with pytest.raises(ManifestError, match="schema version 99"):
        load_manifest(bad)
    bad.write_text('{"schema_version": 1, "run_id": "x"}')
    with pytest.raises(ManifestError, match="malformed"):
        load_manifest(bad)
    bad.write_text("not json")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(bad)


def test_with_thing_replaces_or_appends(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    updated = manifest.with_thing(ThingRecord(name="sim-1", arn="new"))
    assert [t.arn for t in updated.things] == ["arn:t", "new"]
    assert [t.name for t in updated.with_thing(ThingRecord(name="sim-2")).things] == ["sim-0", "sim-1", "sim-2"]


# --- certificates -----------------------------------------------------------------------------------------------


def _make_ca(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, ca: bool = True
) -> tuple[Path, Path]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_issue_device_certificate(tmp_path: Path, kind: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    ca = load_ca(*_make_ca(tmp_path, key))
    cert_pem, key_pem = issue_device_certificate(ca, "sim-0")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sim-0"
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    device_key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(device_key, ec.EllipticCurvePrivateKey)
    assert device_key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_load_ca_rejects(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = _make_ca(tmp_path, key, ca=False)
    with pytest.raises(InputError, match="not a CA"):
        load_ca(cert_path, key_path)
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(InputError, match="does not belong"):
        load_ca(cert_path, other)
    with pytest.raises(InputError, match="cannot read CA file"):
        load_ca(tmp_path / "missing.pem", key_path)


def test_private_file_is_0600_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "k.private.key"
    write_private_file(path, b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret"
    write_private_file(path, b"again")
    assert path.read_bytes() == b"again"
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.private.key"]


def test_amazon_root_ca1_from_the_bundle() -> None:
    pem = amazon_root_ca1()
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.fingerprint(hashes.SHA256()).hex() == AMAZON_ROOT_CA1_SHA256
    assert cert.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"


# --- local-iot.json ---------------------------------------------------------------------------------------------


def test_read_local_config(tmp_path: Path) -> None:
    (tmp_path / "local-iot.json").write_text(
        json.dumps(
            {
                "mqtt_host": "127.0.0.1",
                "mqtt_port": 1884,
                "tls_port": 8884,
                "ca_cert": "ca/ca.cert.pem",
                "ca_key": "/abs/ca.private.key",
                "aws_endpoint_url": "http://127.0.0.1:5000",
                "region": "eu-west-1",
            }
        )
    )
    config = read_local_config(tmp_path)
    assert config.ca_cert == tmp_path / "ca/ca.cert.pem"
    assert config.ca_key == Path("/abs/ca.private.key")
    assert (config.tls_port, config.mqtt_port, config.region) == (8884, 1884, "eu-west-1")
    assert config.credentials == ("testing", "testing")
    with pytest.raises(InputError, match="local-iot up"):
        read_local_config(tmp_path / "nothing")
    (tmp_path / "local-iot.json").write_text("{}")
    with pytest.raises(InputError, match="lacks"):
        read_local_config(tmp_path)


def test_every_error_class_has_its_own_click_exception() -> None:
    import click

    from provisioner.cli.support import CLI_ERRORS, to_click

    codes = {cls.exit_code for cls in CLI_ERRORS}
    assert len(codes) == len(CLI_ERRORS), "exit codes are unique per error class"
    err = to_click(InputError("bad", hint="fix it"))
    assert isinstance(err, click.ClickException)
    assert (type(err).__name__, err.exit_code, err.format_message()) == ("InputErrorCliError", 2, "bad: fix it")
    nested = to_click(Throttled("slow", service="iot", operation="x"))
    assert (type(nested).__name__, nested.exit_code) == ("ThrottledCliError", 8)
