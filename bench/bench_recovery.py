"""How one device recovers from a faulty stream service: time, duplicates and re-requests against local_iot.

Run: ``.venv/bin/python bench/bench_recovery.py [--rounds 5] [--only drop,reorder,delay,disconnect,quota]``.

``local-iot up --faults SPEC --seed N`` runs as a child process (``bench_device.LocalIotProcess``: no GIL shared
with the device); the device is ``Device.run()`` over MQTT5 plain TCP, CBOR, a digest sink checked against the
known SHA-256. Each round uses another seed. Rows give the median transfer time (first request to last block) and
the mean duplicates, re-requests and idle timeouts per download:
- drop: ``--faults drop=0.15`` (15 % of the data messages lost), 1 MiB in 4 KiB blocks, ``--flow-control none``;
- reorder: ``--faults reorder=0.3`` (a block moves behind a later block of its answer), same file, also with
  ``drop=0.15``;
- delay: ``--faults delay=0.2:150ms`` (a fifth of the blocks come 150 ms late, after the rest of their answer):
  what fast re-request costs when late is not lost;
- disconnect: ``--faults disconnect=every:64`` (the broker drops the device after every 64 blocks: 3 times; awscrt
  reconnects after ``reconnect_min_s``, 1 s by default, with full jitter), same file;
- quota: ``--latency-ms 100 --quotas aws --faults drop=0.05``, 2 MiB in 32 KiB blocks, ``--flow-control aws``,
  1-3 requests in flight, as a share of AWS's 512 KiB/s per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_device import LocalIotProcess  # noqa: E402

from device_sim.device.device import Device, DownloadSettings, SinkKind  # noqa: E402
from device_sim.protocol import Format  # noqa: E402
from device_sim.transport import FlowControl, TransportSettings  # noqa: E402

AWS_CEILING = 512 * 1024


class ResumeClock(logging.Handler):
    """Wall-clock times of the transport's "connection resumed" log records (after re-subscribing)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.resumed: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "connection resumed" in record.getMessage():
            self.resumed.append(record.created)


def one_download(iot: LocalIotProcess, data: bytes, block: int, inflight: int, flow: FlowControl) -> dict[str, float]:
    transport = TransportSettings(
        endpoint="127.0.0.1",
        port=iot.info["mqtt_port"],
        no_tls=True,
        client_id="bench-dev",
        flow_control=flow,
    )
    settings = DownloadSettings(
        format=Format.CBOR,
        block_size=block,
        inflight=inflight,
        sink=SinkKind.DIGEST,
        verify_s3=False,
        expect_sha256=hashlib.sha256(data).hexdigest(),
    )
    blocks: list[float] = []
    clock = ResumeClock()
    transport_log = logging.getLogger("device_sim.transport.client")
    transport_log.addHandler(clock)
    transport_log.setLevel(logging.INFO)
    try:
        device = Device(
            thing_name="bench-dev",
            stream_id="s",
            transport=transport,
            settings=settings,
            on_progress=lambda n: blocks.append(time.time()),
        )
        result = asyncio.run(device.run())
    finally:
        transport_log.removeHandler(clock)
    # resumed -> the first new block after it: what a reconnect costs once the connection is back
    gaps = [min((b for b in blocks if b >= r), default=r) - r for r in clock.resumed]
    m = result.metrics
    if not result.ok or m.download_s is None:
        raise RuntimeError(f"the device failed: {result.failure and result.failure.reason}: {result.failure}")
    return {
        "seconds": m.download_s,
        "duplicates": m.duplicates,
        "re_requests": m.re_requests,
        "timeouts": m.timeouts,
        "disconnects": m.disconnects,
        "resume_gap": statistics.mean(gaps) if gaps else float("nan"),
    }


def scenario(
    work: Path, name: str, extra: list[str], size: int, block: int, flow: FlowControl, inflights: list[int], rounds: int
) -> None:
    data = os.urandom(size)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in inflights}
    for seed in range(rounds):  # one emulator per seed: the fault decisions differ per round
        iot = LocalIotProcess(work / f"{name}-{seed}", *extra, "--seed", str(seed + 1))
        try:
            iot.make_stream("s", data)
            for inflight in inflights:
                runs[inflight].append(one_download(iot, data, block, inflight, flow))
        finally:
            iot.stop()
    for inflight, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        mean = {k: statistics.mean(r[k] for r in results) for k in ("duplicates", "re_requests", "timeouts")}
        share = f" {size / seconds / AWS_CEILING:>6.2f}" if flow is FlowControl.AWS else ""
        gaps = [r["resume_gap"] for r in results if r["resume_gap"] == r["resume_gap"]]
        if gaps:
            share += f"  resumed -> next block {statistics.median(gaps) * 1000:.0f} ms (median)"
        print(
            f"{name:<11} {inflight:>8} {seconds:>8.2f} {mean['duplicates']:>6.1f} {mean['re_requests']:>7.1f}"
            f" {mean['timeouts']:>8.1f}{share}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="drop,reorder,delay,disconnect,quota")
    args = parser.parse_args()
    only = set(args.only.split(","))
    mib = 1 << 20
    print(f"median seconds, mean duplicates / re-requests / idle timeouts per download, {args.rounds} seeds")
    print(f"{'faults':<11} {'inflight':>8} {'seconds':>8} {'dups':>6} {'re-req':>7} {'timeouts':>8} {'of 512 KiB/s'}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        none = FlowControl.NONE
        if "drop" in only:
            scenario(work, "drop=0.15", ["--faults", "drop=0.15"], mib, 4096, none, [1, 2], args.rounds)
        if "reorder" in only:
            scenario(work, "reorder=0.3", ["--faults", "reorder=0.3"], mib, 4096, none, [1, 2], args.rounds)
            extra = ["--faults", "drop=0.15,reorder=0.3"]
            scenario(work, "drop+reord", extra, mib, 4096, none, [1, 2], args.rounds)
        if "delay" in only:
            extra = ["--faults", "delay=0.2:150ms"]
            scenario(work, "delay", extra, mib, 4096, none, [1, 2], args.rounds)
        if "disconnect" in only:
            extra = ["--faults", "disconnect=every:64"]
            scenario(work, "disconnect", extra, mib, 4096, none, [1], args.rounds)
        if "quota" in only:
            extra = ["--latency-ms", "100", "--quotas", "aws", "--faults", "drop=0.05"]
            scenario(work, "quota+5%", extra, 2 * mib, 32768, FlowControl.AWS, [1, 2, 3], max(2, args.rounds // 2))


if __name__ == "__main__":
    main()
