"""``device-sim download`` and ``device-sim fleet`` under bad TLS files and bad output locations: one line naming
the file or the option, exit code 2, before anything connects, and nothing created.

No broker: every command here points at a port nothing listens on, so a run that got past the checks would fail
differently (connect failure, exit 5 or 1) and the assertions would catch it. A read-only directory is a
read-only tmpfs when the tests run as root (root ignores permission bits).
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sim.cli import main
from device_sim.transport import InvalidSettings, TransportSettings
from device_sim.transport.tls_files import TlsFileChecker
from local_iot.ports import free_port
from provisioner.manifest import Manifest, MqttEndpoint, StreamRecord, ThingRecord, save_manifest

# ------------------------------------------------------------------------------------------------- helpers


def _pem_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its (unencrypted, PKCS#8) key, as ``provisioner up`` writes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.cert.pem", directory / f"{name}.private.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _corrupt_body(pem: bytes) -> bytes:
    """The PEM header and footer over a body that is no longer base64 DER."""
    lines = pem.splitlines(keepends=True)
    return lines[0] + b"".join(line.replace(b"A", b"*").replace(b"M", b"!") for line in lines[1:-1]) + lines[-1]


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    """Good files (``cert``/``key`` of device a, ``ca``) and broken ones, each a real file on disk."""
    files_dir = tmp_path / "tls"
    cert, key = _pem_pair(files_dir, "a")
    other_cert, other_key = _pem_pair(files_dir, "b")
    ca, _ = _pem_pair(files_dir, "ca")
    broken = {
        "corrupt_cert": _corrupt_body(cert.read_bytes()),
        "truncated_cert": cert.read_bytes()[: len(cert.read_bytes()) // 2],
        "truncated_ca": ca.read_bytes()[:-40],
        "truncated_key": key.read_bytes()[:100],
    }
    paths = {"cert": cert, "key": key, "ca": ca, "other_key": other_key, "other_cert": other_cert}
    for name, data in broken.items():
        paths[name] = files_dir / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def _download(port: int, *args: str) -> Result:
    base = ["download", "--endpoint", "127.0.0.1", "--port", str(port), "--thing", "t", "--stream", "s"]
    return CliRunner().invoke(main, [*base, "--json", "--no-verify-s3", *args])


# ------------------------------------------------------------------------------------------ 1: TLS files


@pytest.mark.parametrize(
    ("cert", "key", "ca", "expected"),
    [
        pytest.param(
            "cert", "other_key", "ca", "the private key {other_key} does not belong to the certificate {cert}", id="key"
        ),
        pytest.param("corrupt_cert", "key", "ca", "the certificate {corrupt_cert} does not load: corrupt", id="body"),
        pytest.param(
            "truncated_cert", "key", "ca", "the certificate {truncated_cert} does not load: truncated", id="cert-cut"
        ),
        pytest.param(
            "cert", "key", "truncated_ca", "the CA certificate {truncated_ca} does not load: truncated", id="ca"
        ),
        pytest.param("cert", "truncated_key", "ca", "the private key {truncated_key} does not load: truncated", id="k"),
    ],
)
def test_download_names_the_tls_file_that_does_not_load_and_exits_2(
    tmp_path: Path, tls: dict[str, Path], cert: str, key: str, ca: str, expected: str
) -> None:
    port = free_port("127.0.0.1")  # nothing listens: a run past the check would fail to connect (exit 5)
    out, state = tmp_path / "out" / "fw.bin", tmp_path / "state"
    out.parent.mkdir()
    result = _download(
        port, "--cert", str(tls[cert]), "--key", str(tls[key]), "--ca", str(tls[ca]), "--out", str(out),
        "--state-dir", str(state),
    )  # fmt: skip
    line = _one_error_line(result)
    assert expected.format(**{name: str(path) for name, path in tls.items()}) in line, line
    assert "Traceback" not in result.output and "AWS_IO_TLS_CTX_ERROR" not in line
    assert list(out.parent.iterdir()) == [] and not state.exists()


def test_a_tls_checker_reads_each_distinct_file_once(tmp_path: Path, tls: dict[str, Path]) -> None:
    """A fleet's devices share the CA: it is read for the first device only (a file removed afterwards is not
    read again), while every device's own key pair is checked."""
    ca = tmp_path / "shared-ca.pem"
    shutil.copy(tls["ca"], ca)
    checker = TlsFileChecker()

    def device(cert: str, key: str) -> TransportSettings:
        return TransportSettings(endpoint="127.0.0.1", client_id="t", cert=tls[cert], key=tls[key], ca=ca)

    checker.check(device("cert", "key"))
    ca.unlink()
    checker.check(device("other_cert", "other_key"))
    with pytest.raises(InvalidSettings, match="does not belong to the certificate"):
        checker.check(device("cert", "other_key"))


def _manifest(tmp_path: Path, port: int, pairs: list[tuple[Path, Path]], ca: Path) -> Path:
    things = tuple(
        ThingRecord(name=f"sim-{i}", arn=f"arn:aws:iot:us-east-1:123456789012:thing/sim-{i}", cert_path=c, key_path=k)
        for i, (c, k) in enumerate(pairs)
    )
    manifest = Manifest(
        run_id="r1",
        region="us-east-1",
        account_id="123456789012",
        created_at="now",
        aws_endpoint_url=f"http://127.0.0.1:{port}",
        mqtt=MqttEndpoint(host="127.0.0.1", port=port, ca_path=ca, plain_port=port),
        stream=StreamRecord(
            stream_id="fw", stream_arn="arn:stream/fw", version=1, description="", role_arn="arn:role", files=()
        ),
        things=things,
    )
    path = tmp_path / "run.json"
    save_manifest(manifest, path)
    return path


def test_fleet_names_the_thing_and_file_of_a_bad_key_before_any_device_starts(
    tmp_path: Path, tls: dict[str, Path]
) -> None:
    certs = tmp_path / "certs"
    pairs = [_pem_pair(certs, f"sim-{i}") for i in range(3)]
    pairs[1] = (pairs[1][0], pairs[2][1])  # sim-1 was given sim-2's key
    port = free_port("127.0.0.1")
    reports = tmp_path / "reports"
    manifest = _manifest(tmp_path, port, pairs, tls["ca"])
    args = ["fleet", "--manifest", str(manifest), "--report-dir", str(reports), "--quiet", "--expect-sha256", "0" * 64]
    result = CliRunner().invoke(main, args)
    line = _one_error_line(result)
    assert line == (
        f"Error: thing sim-1: the private key {pairs[2][1]} does not belong to the certificate {pairs[1][0]} "
        "(pass the key that was issued with this certificate)"
    )
    assert not reports.exists()
    # a truncated CA: named once, for the first thing
    truncated_ca = tmp_path / "ca-cut.pem"
    truncated_ca.write_bytes(tls["ca"].read_bytes()[:-40])
    pairs[1] = _pem_pair(certs, "sim-1")
    manifest = _manifest(tmp_path, port, pairs, truncated_ca)
    line = _one_error_line(CliRunner().invoke(main, args))
    assert line.startswith(f"Error: thing sim-0: the CA certificate {truncated_ca} does not load: truncated"), line
    assert not reports.exists()


# ------------------------------------------------------------------------------------ 2: output locations


def test_download_refuses_an_out_whose_directory_is_missing_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "nonexist" / "dir" / "f.bin"
    result = _download(free_port("127.0.0.1"), "--no-tls", "--out", str(out))
    line = _one_error_line(result)
    assert line.startswith(f"Error: --out: the directory {out.parent} does not exist"), line
    assert not (tmp_path / "nonexist").exists()


def test_download_refuses_a_read_only_out_directory(read_only_dir: Path) -> None:
    out = read_only_dir / "f.bin"
    line = _one_error_line(_download(free_port("127.0.0.1"), "--no-tls", "--out", str(out)))
    assert line.startswith(f"Error: --out: cannot write to the directory {read_only_dir}: "), line
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("where", ["itself", "its parent"])
def test_download_names_state_dir_when_the_state_dir_is_read_only(
    tmp_path: Path, read_only_dir: Path, where: str
) -> None:
    state = read_only_dir if where == "itself" else read_only_dir / "state"
    out = tmp_path / "fw.bin"
    result = _download(free_port("127.0.0.1"), "--no-tls", "--out", str(out), "--state-dir", str(state))
    line = _one_error_line(result)
    what = "state directory" if where == "itself" else "parent directory of the state directory"
    assert line.startswith(f"Error: --state-dir: cannot write to the {what} {read_only_dir}: "), line
    assert "--out" not in line
    assert list(tmp_path.iterdir()) == [read_only_dir] and list(read_only_dir.iterdir()) == []


def test_download_refuses_a_state_dir_whose_parent_is_missing(tmp_path: Path) -> None:
    state = tmp_path / "missing" / "state"
    result = _download(free_port("127.0.0.1"), "--no-tls", "--out", str(tmp_path / "f.bin"), "--state-dir", str(state))
    line = _one_error_line(result)
    assert line.startswith(f"Error: --state-dir: the parent directory of the state directory {state.parent} "), line
    assert list(tmp_path.iterdir()) == []


def test_fleet_refuses_a_read_only_report_dir_before_any_device_starts(
    tmp_path: Path, tls: dict[str, Path], read_only_dir: Path
) -> None:
    port = free_port("127.0.0.1")  # had the devices run, each would fail to connect and the fleet exit 1
    manifest = _manifest(tmp_path, port, [_pem_pair(tmp_path / "certs", "sim-0")], tls["ca"])
    for reports, what in ((read_only_dir, "report directory"), (read_only_dir / "r", "parent directory")):
        args = ["fleet", "--manifest", str(manifest), "--report-dir", str(reports), "--quiet"]
        line = _one_error_line(CliRunner().invoke(main, [*args, "--expect-sha256", "0" * 64]))
        assert line.startswith(f"Error: --report-dir: cannot write to the {what}"), line
        assert f" {read_only_dir}: " in line
    missing = tmp_path / "missing" / "reports"
    args = ["fleet", "--manifest", str(manifest), "--report-dir", str(missing), "--quiet"]
    line = _one_error_line(CliRunner().invoke(main, args))
    assert line.startswith(f"Error: --report-dir: the parent directory of the report directory {missing.parent} "), line
    assert not missing.parent.exists()
