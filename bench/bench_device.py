"""One device downloading a 16 MiB stream from local_iot: goodput beside the raw broker rate, and under AWS quotas.

Run: ``.venv/bin/python bench/bench_device.py [--quick] [--sizes 1KiB,4KiB,32KiB,128KiB] [--rounds 3] [--no-quota]``.

How it works: ``local-iot up`` runs as a child process (no latency, no quotas), so the emulator does not share a
GIL with the device; a 16 MiB stream is created with boto3 against its control plane. For each block size:
- raw: one paho publisher (another process, TCP_NODELAY) sends messages of the size of a data message through
  the same mosquitto to one paho subscriber here (``bench_service.raw_rate``), as fast as it can;
- device: ``Device.run()`` (awscrt MQTT5, plain TCP, CBOR, ``--flow-control none``, digest sink, checked against
  the known SHA-256) with 1 and then 2 requests in flight; goodput = file bytes / transfer time (first request to
  last block; connect, describe and verification apart).
Raw and device runs alternate ``--rounds`` times; the best of each is kept. Targets: device with one
request in flight >= 0.5 x raw at 4 KiB, more with 2.

Then a second ``local-iot up --latency-ms 100 --quotas aws`` (a WAN round trip, AWS's per-connection limits of
100 publishes/s and 512 KiB/s): the device downloads a 4 MiB stream at 32 KiB blocks with ``--flow-control aws``
and 1, 2 and 3 requests in flight; goodput as a fraction of 512 KiB/s (target >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import boto3  # noqa: E402
from bench_service import raw_rate  # noqa: E402

from device_sim.cli.options import parse_size  # noqa: E402
from device_sim.device.device import Device, DeviceResult, DownloadSettings, SinkKind  # noqa: E402
from device_sim.protocol import Format, encode_data_block  # noqa: E402
from device_sim.transport import FlowControl, TransportSettings  # noqa: E402

AWS_CEILING = 512 * 1024  # bytes/s per connection
ROLE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


class LocalIotProcess:
    """``local-iot up`` as a child process (stopped by its PID); ``session`` is boto3 pointed at it."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.log = (state_dir.parent / f"{state_dir.name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "local_iot", "up", "--state-dir", str(state_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the "written:" line comes after local-iot.json is in place
            if "written:" in line:
                break
        else:
            raise RuntimeError(f"local-iot up exited with {self.proc.wait()}; see {self.log.name}")
        self.info: dict[str, Any] = json.loads((state_dir / "local-iot.json").read_text())
        self.session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.info["region"]
        )

    def client(self, name: str) -> Any:
        return self.session.client(name, endpoint_url=self.info["aws_endpoint_url"])

    def make_stream(self, stream_id: str, data: bytes) -> None:
        s3, iam, iot = self.client("s3"), self.client("iam"), self.client("iot")
        s3.create_bucket(Bucket="bench")
        s3.put_bucket_versioning(Bucket="bench", VersioningConfiguration={"Status": "Enabled"})
        version = s3.put_object(Bucket="bench", Key=f"{stream_id}.bin", Body=data)["VersionId"]
        role = iam.create_role(RoleName=f"r-{stream_id}", AssumeRolePolicyDocument=json.dumps(ROLE_TRUST))["Role"]
        iam.put_role_policy(
            RoleName=f"r-{stream_id}",
            PolicyName="read",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": "*"}
                    ],
                }
            ),
        )
        location = {"bucket": "bench", "key": f"{stream_id}.bin", "version": version}
        iot.create_stream(streamId=stream_id, files=[{"fileId": 0, "s3Location": location}], roleArn=role["Arn"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    goodput: float  # bytes/s of file data over the transfer time
    duplicates: int
    re_requests: int
    timeouts: int


def download(iot: LocalIotProcess, stream_id: str, sha256: str, settings: DownloadSettings, flow: FlowControl) -> Run:
    transport = TransportSettings(
        endpoint="127.0.0.1", port=iot.info["mqtt_port"], no_tls=True, client_id="bench-dev", flow_control=flow
    )
    device = Device(thing_name="bench-dev", stream_id=stream_id, transport=transport, settings=settings)
    result: DeviceResult = asyncio.run(device.run())
    if not result.ok or result.metrics.download_s is None:
        raise RuntimeError(f"the device failed: {result.failure and result.failure.reason}: {result.failure}")
    m = result.metrics
    size = sum(f.file_size for f in result.files)
    return Run(goodput=size / m.download_s, duplicates=m.duplicates, re_requests=m.re_requests, timeouts=m.timeouts)


def settings_for(block: int, inflight: int, sha256: str) -> DownloadSettings:
    return DownloadSettings(
        format=Format.CBOR,
        block_size=block,
        inflight=inflight,
        sink=SinkKind.DIGEST,
        verify_s3=False,
        expect_sha256=sha256,
    )


def local_table(args: argparse.Namespace, work: Path) -> bool:
    data = os.urandom(args.file_size)
    sha = hashlib.sha256(data).hexdigest()
    iot = LocalIotProcess(work / "plain")
    ok = True
    try:
        iot.make_stream("bench", data)
        broker = SimpleNamespace(host="127.0.0.1", mqtt_port=iot.info["mqtt_port"])
        mib = args.file_size / 2**20
        print(f"one device, {mib:g} MiB, CBOR, MQTT5 plain TCP, flow control none; best of {args.rounds}")
        columns = ("block", "msg B", "raw MB/s", "dev x1 MB/s", "ratio", "dev x2 MB/s", "ratio")
        widths = (7, 7, 9, 12, 6, 12, 6)
        print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + "  dup/re-req x1, x2")
        for block in args.sizes:
            message = len(encode_data_block(Format.CBOR, 0, 1000, bytes(block), "g1"))
            count = (
                max(500, min(20000, (64 << 20) // block))
                if not args.quick
                else max(200, min(4000, (16 << 20) // block))
            )
            raw, one, two = 0.0, None, None
            for _ in range(args.rounds):
                raw = max(raw, raw_rate(broker, message, count) * block)  # type: ignore[arg-type]
                r1 = download(iot, "bench", sha, settings_for(block, 1, sha), FlowControl.NONE)
                r2 = download(iot, "bench", sha, settings_for(block, 2, sha), FlowControl.NONE)
                one = r1 if one is None or r1.goodput > one.goodput else one
                two = r2 if two is None or r2.goodput > two.goodput else two
            assert one is not None and two is not None
            print(
                f"{block:>7} {message:>7} {raw / 1e6:>9.1f} {one.goodput / 1e6:>12.1f} {one.goodput / raw:>6.2f} "
                f"{two.goodput / 1e6:>12.1f} {two.goodput / raw:>6.2f}  "
                f"{one.duplicates}/{one.re_requests}, {two.duplicates}/{two.re_requests}",
                flush=True,
            )
            if block == 4096:
                ok = one.goodput >= 0.5 * raw and two.goodput >= one.goodput * 0.95
                print(f"  target at 4 KiB: x1 >= 0.5 raw and x2 more: {'met' if ok else 'MISSED'}")
    finally:
        iot.stop()
    return ok


def quota_table(args: argparse.Namespace, work: Path) -> bool:
    data = os.urandom(args.quota_file_size)
    sha = hashlib.sha256(data).hexdigest()
    iot = LocalIotProcess(work / "aws", "--latency-ms", "100", "--quotas", "aws")
    ok = False
    try:
        iot.make_stream("bench_aws", data)
        print()
        print(
            f"latency 100 ms, quotas aws (100 publishes/s, 512 KiB/s), flow control aws, "
            f"{args.quota_file_size / 2**20:g} MiB at 32 KiB blocks (4 per request)"
        )
        print(f"{'inflight':>8} {'KiB/s':>8} {'of 512':>7} {'dup':>5} {'re-req':>7} {'timeouts':>9}")
        for inflight in (1, 2, 3):
            run = download(iot, "bench_aws", sha, settings_for(32768, inflight, sha), FlowControl.AWS)
            share = run.goodput / AWS_CEILING
            print(
                f"{inflight:>8} {run.goodput / 1024:>8.0f} {share:>7.2f} {run.duplicates:>5} {run.re_requests:>7} "
                f"{run.timeouts:>9}",
                flush=True,
            )
            if inflight == 2:
                ok = share >= 0.9
        print(f"  target >= 0.9 of 512 KiB/s at 32 KiB blocks with --inflight 2: {'met' if ok else 'MISSED'}")
    finally:
        iot.stop()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer raw messages, 1 round, 4 MiB files")
    parser.add_argument("--sizes", default="1KiB,4KiB,32KiB,128KiB", help="block sizes")
    parser.add_argument("--file-size", default="16MiB")
    parser.add_argument("--quota-file-size", default="4MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-quota", action="store_true", help="skip the latency + AWS quota run")
    args = parser.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.file_size = parse_size(args.file_size)
    args.quota_file_size = parse_size(args.quota_file_size)
    if args.quick:
        args.rounds = 1
        args.file_size = min(args.file_size, 4 << 20)
        args.quota_file_size = min(args.quota_file_size, 2 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        ok = local_table(args, Path(tmp))
        if not args.no_quota:
            ok = quota_table(args, Path(tmp)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
