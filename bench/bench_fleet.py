"""Fleet scale: N devices (default 1000) each download a 1 MiB stream at 4 KiB blocks from local_iot, in one process.

Run: ``.venv/bin/python bench/bench_fleet.py [--devices 1000] [--size 1MiB] [--block-size 4KiB] [--tls|--no-tls|--both]
[--connect-rate 500] [--json out.json]``. Provisioning 1000 things takes about 2 minutes: ``--work-dir W
--keep-running`` leaves local-iot and the things in place, and ``--reuse W`` measures again without provisioning.
``--report-dir R`` also writes the N-device fleet's usual reports (R/mTLS/devices.jsonl ...): which devices timed out
or got blocks twice, and when.

How it works: ``local-iot up`` runs as a subprocess (no quotas, no latency), so the emulator does not share a GIL
with the fleet; ``provisioner up`` creates the stream and N things with certificates (not timed). Every measurement
is then a fresh child process of this script (``worker ...``), so that its peak RSS is its own:
- ``fleet``: ``run_fleet`` over the manifest, exactly what ``device-sim fleet`` runs (digest sinks,
  S3 verification, default flow control); it reports wall time, goodput, and ``FleetRun.memory`` (RSS when the
  devices start, peak RSS until they end, from the kernel's VmHWM);
- ``bare``: N ``MqttTransport`` connections, each subscribed to its device's three topics, no download: the cost
  of the connections themselves. "Beyond the connection" = (fleet growth - bare growth) / N;
- ``one``: one device alone with the same settings (a latency-bound reference).
The service's single-stream rate comes from ``bench_service.service_rate`` in the same run (its own mosquitto,
the stream service in a child process, one paho device keeping 4 requests of 128 KiB in flight).

Targets: every device verified; peak RSS beyond the connection < 150 KiB per device; duplicates <= 0.5 % of the
blocks; and, for files of 1 MiB or more, aggregate goodput >= 0.5 x the service's single-stream rate and <= 35 us of
the fleet process's CPU per verified block (short files are bound by the connect rate and the connections' cost).
Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_BEYOND_KIB = 150.0
TARGET_GOODPUT_RATIO = 0.5
TARGET_CPU_US_PER_BLOCK = 35.0
TARGET_DUPLICATE_SHARE = 0.005
# Goodput and CPU per block are targets for long downloads (the issue's 1000 devices x 1 MiB): with a few blocks per
# device (10,000 x 64 KiB = 16 blocks each) the connect rate bounds the goodput and the connection's own CPU (TLS
# handshake, subscribe) dominates each block's, so both are printed there without a verdict.
TARGET_MIN_SIZE = 1 << 20


# ------------------------------------------------------------------------------------------------ child workers


def _load(manifest: Path, no_tls: bool, devices: int) -> tuple[Any, list[Any]]:
    from device_sim.fleet.plan import read_target

    target, identities = read_target(manifest, no_tls=no_tls)
    return target, identities[:devices]


async def _fleet_worker(args: argparse.Namespace) -> dict[str, Any]:
    from device_sim.device.device import DownloadSettings, SinkKind
    from device_sim.fleet.plan import s3_source
    from device_sim.fleet.resources import drop_system_trust_env, ensure_open_files
    from device_sim.fleet.runner import FleetProgress, FleetSettings, run_fleet
    from device_sim.transport import FlowControl, MqttProtocol

    target, identities = _load(args.manifest, args.no_tls, args.devices)
    ensure_open_files(len(identities))
    if not args.no_tls and not args.keep_trust_env:
        drop_system_trust_env()  # what `device-sim fleet` does
    download = DownloadSettings(block_size=args.block_size, sink=SinkKind.DIGEST, request_timeout=args.request_timeout)
    fleet = FleetSettings(
        connect_rate=args.connect_rate,
        transport={"flow_control": FlowControl(args.flow_control), "protocol": MqttProtocol(args.protocol)},
        crt_threads=args.crt_threads,
    )
    source = s3_source(target)
    gc_s = [0.0, 0.0, 0.0]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            gc_s[info["generation"]] += time.thread_time() - gc_started[0]

    gc.callbacks.append(on_gc)
    cpu0, threads0 = os.times(), _thread_cpu()
    run = await run_fleet(target, identities, download, fleet, source=source, progress=FleetProgress())
    cpu1, threads1 = os.times(), _thread_cpu()
    gc.callbacks.remove(on_gc)
    from device_sim.transport._driver import LoopHop

    wakeups = LoopHop.for_loop(asyncio.get_running_loop()).wakeups
    s = run.summary
    if args.report_dir is not None:  # after the measurement: writing is not part of it
        from device_sim.results.files import write_reports

        write_reports(args.report_dir, s, run.records)
    return {
        "devices": s.devices,
        "verified": s.verified,
        "failures": dict(s.failures_by_reason),
        "wall_s": run.wall_s,
        "bytes_verified": s.bytes_verified,
        "mb_s": s.throughput_mb_s,
        "blocks": s.blocks,
        "duplicates": s.duplicates,
        "timeouts": s.timeouts,
        "re_requests": s.re_requests,
        "connect_p50_s": s.connect_s.p50 if s.connect_s else None,
        "connect_p90_s": s.connect_s.p90 if s.connect_s else None,
        "connect_p99_s": s.connect_s.p99 if s.connect_s else None,
        "connect_max_s": s.connect_s.max if s.connect_s else None,
        "download_p50_s": s.download_s.p50 if s.download_s else None,
        "download_max_s": s.download_s.max if s.download_s else None,
        "cpu_user_s": cpu1.user - cpu0.user,
        "cpu_system_s": cpu1.system - cpu0.system,
        "memory": run.memory.to_dict() if run.memory else None,
        "gc_s": [round(x, 3) for x in gc_s],
        "loop_wakeups": wakeups,
        "thread_cpu_s": {name: round(threads1.get(name, 0.0) - threads0.get(name, 0.0), 3) for name in threads1},
    }


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) per thread of this process, by thread name (/proc; empty elsewhere): the
    event loop's thread is "loop", awscrt's event-loop threads "AwsEventLoop", every other thread "other"."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    totals: dict[str, float] = {}
    main = threading.get_native_id()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return totals
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        name = "loop" if int(tid) == main else ("AwsEventLoop" if comm.startswith("AwsEventLoop") else "other")
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


async def _bare_worker(args: argparse.Namespace) -> dict[str, Any]:
    """N connections subscribed like devices, nothing downloaded: what the connections alone cost."""
    from device_sim.fleet.resources import MemoryMeter, drop_system_trust_env, ensure_open_files
    from device_sim.fleet.runner import fleet_crt_resources, transport_for
    from device_sim.protocol import Format, subscription_filters
    from device_sim.transport import FlowControl, MqttProtocol, MqttTransport

    target, identities = _load(args.manifest, args.no_tls, args.devices)
    ensure_open_files(len(identities))
    if not args.no_tls and not args.keep_trust_env:
        drop_system_trust_env()
    resources = fleet_crt_resources(args.crt_threads)  # the fleet's
    options = {"flow_control": FlowControl(args.flow_control), "protocol": MqttProtocol(args.protocol)}
    loop = asyncio.get_running_loop()
    meter = MemoryMeter()
    meter.start()
    started = loop.time()
    cpu0, threads0 = os.times(), _thread_cpu()

    async def one(i: int, identity: Any) -> MqttTransport:
        await asyncio.sleep(max(0.0, started + i / args.connect_rate - loop.time()))  # connect pacing
        mqtt = MqttTransport(
            transport_for(identity, target, options), on_message=lambda topic, payload: None, resources=resources
        )
        await mqtt.connect()
        await mqtt.subscribe(subscription_filters(identity.thing_name, target.stream_id, Format.CBOR))
        return mqtt

    transports = await asyncio.gather(*(one(i, identity) for i, identity in enumerate(identities)))
    connected_s = loop.time() - started
    cpu1, threads1 = os.times(), _thread_cpu()
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    memory = meter.stop(len(identities))
    await asyncio.gather(*(t.close() for t in transports))
    return {
        "devices": len(transports),
        "connected_s": connected_s,
        "open_fds": fds,
        "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 3),
        "thread_cpu_s": {name: round(threads1.get(name, 0.0) - threads0.get(name, 0.0), 3) for name in threads1},
        "memory": memory.to_dict() if memory else None,
    }


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_fleet.py worker")
    parser.add_argument("kind", choices=["fleet", "bare"])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--flow-control", default="aws")
    parser.add_argument("--protocol", default="mqtt5")
    parser.add_argument("--no-tls", action="store_true")
    parser.add_argument("--request-timeout", type=float, default=None)
    parser.add_argument("--keep-trust-env", action="store_true")
    parser.add_argument("--crt-threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = _fleet_worker if args.kind == "fleet" else _bare_worker
    result = asyncio.run(work(args))
    args.out.write_text(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ orchestration


def _size(text: str) -> int:
    from device_sim.cli.options import parse_size

    return parse_size(text)


class LocalIotProcess:
    """``local-iot up`` with ``extra`` options as a child process (or one a previous ``--keep-running`` run left);
    ``env`` points boto3 at it. Stopped by its PID. bench_sweep.py uses it too."""

    def __init__(self, state_dir: Path, *extra: str, attach: bool = False) -> None:
        self.state_dir = state_dir
        self.proc: subprocess.Popen[str] | None = None
        pid_file = state_dir.parent / "local-iot.pid"
        if attach:
            self.pid = int(pid_file.read_text())
            os.kill(self.pid, 0)  # still running? (ProcessLookupError otherwise)
        else:
            with (state_dir.parent / "local-iot.log").open("w") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "local_iot", "up", "--state-dir", str(state_dir), *extra],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    cwd=ROOT,
                )
            self.pid = self.proc.pid
            pid_file.write_text(str(self.pid))
            assert self.proc.stdout is not None
            for line in self.proc.stdout:  # the "written:" line comes after local-iot.json is in place
                if "written:" in line:
                    break
            else:
                raise RuntimeError(f"local-iot up exited with {self.proc.wait()}; see {state_dir.parent}/local-iot.log")
        from local_iot.control_plane import aws_environment
        from local_iot.runner import load_info

        self.info = load_info(state_dir)
        self.env = {**os.environ, **aws_environment(self.info["aws_endpoint_url"], self.info["region"])}
        self.env.pop("AWS_PROFILE", None)

    def stop(self) -> None:
        if self.proc is None:
            os.kill(self.pid, signal.SIGTERM)  # attached: not our child, nothing to wait for
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def provision(iot: LocalIotProcess, work: Path, devices: int, size: int, name: str = "bench") -> tuple[Path, float]:
    """``provisioner up`` of ``devices`` things ``<name>-<i>`` and a ``size``-byte stream ``<name>fw`` (not timed by
    the benches: the seconds it took are returned)."""
    manifest = work / "run.json"
    cmd = [
        sys.executable,
        "-m",
        "provisioner",
        "up",
        "--local",
        str(iot.state_dir),
        "--stream-id",
        f"{name}fw",
        "--generate",
        str(size),
        "--seed",
        "7",
        "--bucket",
        f"{name}-fw",
        "--create-bucket",
        "--create-role",
        "--things",
        str(devices),
        "--thing-prefix",
        name,
        "--certs-dir",
        str(work / "certs"),
        "--manifest",
        str(manifest),
        "--tps",
        "1000",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=iot.env, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"provisioner up failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return manifest, time.perf_counter() - t0


def run_worker(kind: str, iot: LocalIotProcess, work: Path, manifest: Path, devices: int, args: Any, tls: bool) -> Any:
    out = work / f"{kind}-{devices}-{'tls' if tls else 'plain'}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", kind, "--manifest", str(manifest)]
    cmd += ["--devices", str(devices), "--block-size", str(args.block_size), "--connect-rate", str(args.connect_rate)]
    cmd += ["--flow-control", args.flow_control, "--protocol", args.protocol, "--out", str(out)]
    if args.request_timeout is not None:
        cmd += ["--request-timeout", str(args.request_timeout)]
    if args.keep_trust_env:
        cmd.append("--keep-trust-env")
    if args.crt_threads is not None:
        cmd += ["--crt-threads", str(args.crt_threads)]
    if not tls:
        cmd.append("--no-tls")
    if kind == "fleet" and devices == args.devices and args.report_dir is not None:
        cmd += ["--report-dir", str(args.report_dir / ("mTLS" if tls else "plain"))]
    print(f"  {kind} x{devices} ({'mTLS' if tls else 'plain TCP'}) ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=iot.env, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def service_single_stream(block: int, rounds: int) -> float:
    """Blocks/s of one stream through the stream service (bench_service.service_rate, best of ``rounds``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_service

    from device_sim.protocol.limits import MAX_DATA_PER_REQUEST
    from local_iot.broker import BrokerConfig, MosquittoBroker

    count = max(200, min(40000, 96 * 1024 * 1024 // block))
    count -= count % (MAX_DATA_PER_REQUEST // block)
    ctx = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as state,
        MosquittoBroker(BrokerConfig(state_dir=Path(state), tls_port=None, max_queued_messages=0)) as broker,
    ):
        ready, stop = ctx.Event(), ctx.Event()
        service = ctx.Process(target=bench_service._service_process, args=(broker.host, broker.mqtt_port, ready, stop))
        service.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the stream service process did not start")
            return max(bench_service.service_rate(broker, block, count, 4, "cbor") for _ in range(rounds))
        finally:
            stop.set()
            service.join(30)


def raw_receive_cost(block: int, rounds: int, protocol: str) -> float:
    """Process CPU microseconds per received ``block``-byte message of one bare MqttTransport (``protocol``, plain TCP,
    nothing done with the message), the sender's own cost subtracted: what awscrt and the loop hop cost at least,
    measured in this run (bench_transport.receive_run, best of ``rounds``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_transport

    from device_sim.transport import MqttProtocol
    from local_iot.broker import BrokerConfig, MosquittoBroker

    count = 4000
    with (
        tempfile.TemporaryDirectory() as state,
        MosquittoBroker(BrokerConfig(state_dir=Path(state), tls_port=None, max_queued_messages=0)) as broker,
    ):
        best = min(
            asyncio.run(bench_transport.receive_run(broker, MqttProtocol(protocol), count, block))[2]
            for _ in range(rounds)
        )
    return best - bench_transport.sender_cost(count, block)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(iot: LocalIotProcess, work: Path, manifest: Path, args: Any, tls: bool) -> dict[str, Any]:
    bare = run_worker("bare", iot, work, manifest, args.devices, args, tls)
    pids = (iot.pid, int(iot.info["broker_pid"]))
    before = [_cpu_s(pid) for pid in pids]
    fleet = run_worker("fleet", iot, work, manifest, args.devices, args, tls)
    after = [_cpu_s(pid) for pid in pids]
    one = run_worker("fleet", iot, work, manifest, 1, args, tls)
    n = args.devices
    result: dict[str, Any] = {"bare": bare, "fleet": fleet, "one_device": one}
    result["emulator_cpu_s"], result["broker_cpu_s"] = (a - b for a, b in zip(after, before, strict=True))
    fm, bm = fleet.get("memory"), bare.get("memory")
    if fm and bm:
        result["rss_per_device_kib"] = fm["rss_growth_kib"] / n
        result["connection_rss_per_device_kib"] = bm["rss_growth_kib"] / n
        result["beyond_connection_kib"] = (fm["rss_growth_kib"] - bm["rss_growth_kib"]) / n
    result["blocks_per_s"] = fleet["bytes_verified"] / args.block_size / fleet["wall_s"]
    verified_blocks = fleet["bytes_verified"] / args.block_size
    cpu = fleet["cpu_user_s"] + fleet["cpu_system_s"]
    result["cpu_us_per_block"] = cpu / verified_blocks * 1e6 if verified_blocks else None
    result["duplicate_share"] = fleet["duplicates"] / verified_blocks if verified_blocks else None
    one_blocks = one["bytes_verified"] / args.block_size
    result["one_device_blocks_per_s"] = one_blocks / one["download_p50_s"] if one["download_p50_s"] else None
    return result


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rows(report: dict[str, Any]) -> list[tuple[str, Any, str]]:
    service = report["service_blocks_per_s"]

    def pair(run: str, a: str, b: str) -> Any:
        return lambda r: f"{r[run][a]:.2f} / {r[run][b]:.2f}"

    return [
        ("verified", lambda r: f"{r['fleet']['verified']}/{r['fleet']['devices']}", ""),
        ("wall time s", lambda r: r["fleet"]["wall_s"], ".2f"),
        ("connect p50 / max s", pair("fleet", "connect_p50_s", "connect_max_s"), ""),
        ("connect p90 / p99 s", pair("fleet", "connect_p90_s", "connect_p99_s"), ""),
        ("download p50 / max s", pair("fleet", "download_p50_s", "download_max_s"), ""),
        ("aggregate MB/s (goodput)", lambda r: r["fleet"]["mb_s"], ".1f"),
        ("aggregate blocks/s", lambda r: r["blocks_per_s"], ".0f"),
        (f"  / service single stream {service:.0f}/s", lambda r: r["blocks_per_s"] / service, ".2f"),
        ("one device alone blocks/s", lambda r: r["one_device_blocks_per_s"], ".0f"),
        ("duplicates / timeouts", lambda r: f"{r['fleet']['duplicates']} / {r['fleet']['timeouts']}", ""),
        ("duplicates, share of blocks %", lambda r: r["duplicate_share"] * 100, ".2f"),
        ("CPU s: fleet", lambda r: r["fleet"]["cpu_user_s"] + r["fleet"]["cpu_system_s"], ".1f"),
        ("CPU us per verified block", lambda r: r["cpu_us_per_block"], ".1f"),
        ("  event loop / awscrt threads us", lambda r: _split_per_block(r), ""),
        ("  of which GC us (full collections)", lambda r: _gc_per_block(r), ""),
        ("  blocks per event-loop wake-up", lambda r: r["fleet"]["blocks"] / max(1, r["fleet"]["loop_wakeups"]), ".1f"),
        ("  connections alone (bare) us", lambda r: r["bare"]["cpu_s"] / max(1, r["fleet"]["blocks"]) * 1e6, ".1f"),
        ("CPU s: emulator, mosquitto", lambda r: f"{r['emulator_cpu_s']:.1f}, {r['broker_cpu_s']:.1f}", ""),
        ("RSS when devices start MiB", lambda r: r["fleet"]["memory"]["rss_start_kib"] / 1024, ".1f"),
        ("peak RSS MiB", lambda r: r["fleet"]["memory"]["rss_peak_kib"] / 1024, ".1f"),
        ("peak RSS growth / device KiB", lambda r: r["rss_per_device_kib"], ".1f"),
        ("  bare connection / device KiB", lambda r: r["connection_rss_per_device_kib"], ".1f"),
        ("  beyond the connection KiB", lambda r: r["beyond_connection_kib"], ".1f"),
        ("bare: all connected after s", lambda r: r["bare"]["connected_s"], ".2f"),
        ("bare: open fds", lambda r: r["bare"]["open_fds"], ""),
    ]


def _split_per_block(r: dict[str, Any]) -> str:
    threads, blocks = r["fleet"].get("thread_cpu_s") or {}, max(1, r["fleet"]["blocks"])
    if "loop" not in threads:
        return "n/a"
    return f"{threads['loop'] / blocks * 1e6:.1f} / {threads.get('AwsEventLoop', 0.0) / blocks * 1e6:.1f}"


def _gc_per_block(r: dict[str, Any]) -> str:
    gc_s, blocks = r["fleet"]["gc_s"], max(1, r["fleet"]["blocks"])
    return f"{sum(gc_s) / blocks * 1e6:.1f} ({gc_s[2] / blocks * 1e6:.1f})"


def print_table(report: dict[str, Any]) -> None:
    runs: dict[str, dict[str, Any]] = report["runs"]
    names = list(runs)
    lines: list[tuple[str, list[str]]] = []
    for label, get, fmt in _rows(report):
        values = []
        for name in names:
            try:
                values.append(_f(get(runs[name]), fmt))
            except (KeyError, TypeError):
                values.append("-")
        lines.append((label, values))
    width = max(len(label) for label, _ in lines)
    print(
        f"\n{report['devices']} devices x {report['size']} B at {report['block_size']} B blocks, connect rate "
        f"{report['connect_rate']:g}/s, flow control {report['flow_control']}, {report['protocol']}; "
        f"load average {report['load_avg'][0]:.1f}"
    )
    print(
        f"service single stream (bench_service, window 4): {report['service_before']:.0f} blocks/s before, "
        f"{report['service_after']:.0f} after; the ratio uses the higher"
    )
    print(
        f"raw awscrt receive (one bare {report['protocol']} client, plain TCP, nothing done per message): "
        f"{report['raw_receive_us']:.1f} us of CPU per {report['block_size']} B message"
    )
    print(f"{'':<{width}}  " + "  ".join(f"{n:>13}" for n in names))
    for label, values in lines:
        print(f"{label:<{width}}  " + "  ".join(f"{v:>13}" for v in values))
    print(
        f"targets: all verified; beyond the connection < {TARGET_BEYOND_KIB:.0f} KiB/device; "
        f"goodput >= {TARGET_GOODPUT_RATIO} x single stream; CPU <= {TARGET_CPU_US_PER_BLOCK:.0f} us per block; "
        f"duplicates <= {TARGET_DUPLICATE_SHARE:.1%} of blocks"
        + ("" if report["size"] >= TARGET_MIN_SIZE else "; goodput and CPU only for files of 1 MiB or more")
    )
    for name, verdict in report["verdicts"].items():
        print(f"  {name}: {verdict}")


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    long_files = report["size"] >= TARGET_MIN_SIZE

    def mark(ok: bool, applies: bool = True) -> str:
        return ("OK" if ok else "FAIL") if applies else "n/a"

    out = {}
    for name, r in report["runs"].items():
        ok_verified = r["fleet"]["verified"] == r["fleet"]["devices"]
        beyond = r.get("beyond_connection_kib")
        ok_rss = beyond is not None and beyond < TARGET_BEYOND_KIB
        ratio = r["blocks_per_s"] / report["service_blocks_per_s"]
        ok_rate = ratio >= TARGET_GOODPUT_RATIO
        cpu, dups = r.get("cpu_us_per_block"), r.get("duplicate_share")
        ok_cpu = cpu is not None and cpu <= TARGET_CPU_US_PER_BLOCK
        ok_dups = dups is not None and dups <= TARGET_DUPLICATE_SHARE
        out[name] = (
            f"verified {mark(ok_verified)}, RSS {mark(ok_rss)} ({_f(beyond, '.1f')} KiB), "
            f"goodput {mark(ok_rate, long_files)} ({ratio:.2f}), CPU {mark(ok_cpu, long_files)} "
            f"({_f(cpu, '.1f')} us/block), duplicates {mark(ok_dups)} ({_f(dups, '.2%')})"
        )
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--size", type=_size, default="1MiB", help="file size (1MiB, 64KiB ...)")
    parser.add_argument("--block-size", type=_size, default="4KiB")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tls", dest="modes", action="store_const", const=["mTLS"], help="mutual TLS only (default)")
    mode.add_argument("--no-tls", dest="modes", action="store_const", const=["plain"], help="plain TCP only")
    mode.add_argument("--both", dest="modes", action="store_const", const=["mTLS", "plain"], help="both")
    parser.add_argument("--connect-rate", type=float, default=500.0, help="connects/s (AWS allows 500/s)")
    parser.add_argument("--flow-control", choices=["aws", "none"], default="aws")
    parser.add_argument("--protocol", choices=["mqtt5", "mqtt311"], default="mqtt5", help="the devices' MQTT version")
    parser.add_argument("--request-timeout", type=float, default=None, help="fixed idle timeout [adaptive]")
    parser.add_argument(
        "--keep-trust-env", action="store_true", help="keep SSL_CERT_FILE/SSL_CERT_DIR (device-sim fleet unsets them)"
    )
    parser.add_argument("--crt-threads", type=int, default=None, help="awscrt threads [fleet default]")
    parser.add_argument("--service-rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep everything here [default: a temp dir]")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="also write the N-device fleet's reports (devices.jsonl, report.html ...) here, one directory per mode",
    )
    parser.add_argument("--keep-running", action="store_true", help="leave local-iot and the things for --reuse")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a --work-dir whose local-iot still runs (skips provisioning)"
    )
    args = parser.parse_args()
    if args.reuse and args.work_dir:
        parser.error("--reuse is the work dir: drop --work-dir")
    if args.report_dir is not None:  # checked before anything starts, not after the fleet ran
        try:
            args.report_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--report-dir {args.report_dir}: cannot create it ({exc.strerror}); choose a writable path")
    modes = args.modes or ["mTLS"]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = (args.reuse or args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        manifest, provision_s = work / "run.json", None
        if args.reuse:
            iot = LocalIotProcess(work / "iot", attach=True)
        else:
            print(f"starting local-iot in {work} ...", file=sys.stderr, flush=True)
            iot = LocalIotProcess(work / "iot")
        keep = args.keep_running or args.reuse is not None
        try:
            if not args.reuse:
                print(f"provisioning {args.devices} things (not timed) ...", file=sys.stderr, flush=True)
                manifest, provision_s = provision(iot, work, args.devices, args.size)
                print(f"  provisioned in {provision_s:.0f} s", file=sys.stderr, flush=True)
            print("service single-stream rate (bench_service) ...", file=sys.stderr, flush=True)
            service_before = service_single_stream(args.block_size, args.service_rounds)
            print("raw awscrt receive cost (bench_transport) ...", file=sys.stderr, flush=True)
            raw_receive_us = raw_receive_cost(args.block_size, args.service_rounds, args.protocol)
            runs = {mode: measure(iot, work, manifest, args, mode == "mTLS") for mode in modes}
            print("service single-stream rate again ...", file=sys.stderr, flush=True)
            service_after = service_single_stream(args.block_size, args.service_rounds)
        except BaseException:
            keep = args.reuse is not None  # never stop a local-iot we did not start
            raise
        finally:
            if not keep:
                iot.stop()
        if keep:
            print(f"local-iot keeps running (pid {iot.pid}): --reuse {work}; stop it with kill {iot.pid}")
    report: dict[str, Any] = {
        "devices": args.devices,
        "size": args.size,
        "block_size": args.block_size,
        "connect_rate": args.connect_rate,
        "flow_control": args.flow_control,
        "protocol": args.protocol,
        "request_timeout": args.request_timeout,
        "keep_trust_env": args.keep_trust_env,
        "crt_threads": args.crt_threads,
        "service_before": service_before,
        "service_after": service_after,
        "service_blocks_per_s": max(service_before, service_after),
        "raw_receive_us": raw_receive_us,
        "provision_s": provision_s,
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "load_avg_start": load_start,
        "runs": runs,
    }
    report["verdicts"] = verdicts(report)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0 if all("FAIL" not in v for v in report["verdicts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
