"""One process vs Locust: the same fleet (default 2000 devices x 256 KiB) through ``device-sim fleet`` (asyncio, one
process) and ``device-sim fleet --engine locust --processes 2`` (a Locust master, 2 workers, 2 device hosts), side by
side.

Run: ``.venv/bin/python bench/bench_locust.py [--devices 2000] [--size 256KiB] [--block-sizes 4KiB,64KiB]
[--connect-rate 200] [--processes 2] [--rounds 1] [--json out.json]``.

How it works: ``local-iot up`` runs as a subprocess (no latency, no quotas) and ``provisioner up`` creates the stream
and the things with certificates (not timed). Each fleet command then runs as a child of this script, in turn;
its wall time is measured around it, and its CPU is the ``wait4`` resource usage of the command, which includes
every descendant reaped before it exits (Locust's master reaps its workers, each worker its device host), so it
is the user+sys time of all the run's processes. The devices' own wall time (first connect to last verdict) comes
from the run's ``summary.json``. The emulator (mosquitto + the stream service) shares the machine: its CPU
during each run is shown too, since on a small machine it, not the fleet, may set the pace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start_local_iot(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    log = (work / "local-iot.log").open("wb")
    proc = subprocess.Popen([BIN / "local-iot", "up", "--state-dir", str(work / "iot")], stdout=log, stderr=log)
    info = work / "iot" / "local-iot.json"
    deadline = time.monotonic() + 60
    while not info.exists():  # local-iot writes its info file once everything listens
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"local-iot did not start: see {work / 'local-iot.log'}")
        time.sleep(0.1)
    env = {}
    for line in (work / "local-iot.log").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    return proc, env


def provision(work: Path, env: dict[str, str], devices: int, size: str) -> Path:
    manifest = work / "run.json"
    cmd = [
        BIN / "provisioner", "up", "--local", str(work / "iot"), "--stream-id", "bench", "--generate", size,
        "--seed", "1", "--bucket", "bench-bucket", "--create-bucket", "--create-role", "--things", str(devices),
        "--thing-prefix", "bench", "--certs-dir", str(work / "certs"), "--manifest", str(manifest), "--tps", "5000",
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    print(f"provisioned {devices} things in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return manifest


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_fleet(
    name: str, args: list[str], env: dict[str, str], report_dir: Path, emulator: psutil.Process
) -> dict[str, Any]:
    cmd = [str(BIN / "device-sim"), *args, "--quiet", "--report-dir", str(report_dir)]
    emulator_cpu0 = tree_cpu(emulator)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    summary = json.loads((report_dir / "summary.json").read_text())["summary"]
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "engine": name,
        "exit_code": proc.returncode,
        "devices": summary["devices"],
        "verified": summary["verified"],
        "failures": summary["failures_by_reason"],
        "wall_s_devices": summary["wall_s"],
        "wall_s_command": wall,
        "cpu_s": cpu,
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
        "cpu_ms_per_device": 1000 * cpu / max(1, summary["devices"]),
        "max_rss_mib_one_process": usage.ru_maxrss / 1024,
        "goodput_mb_s": summary["throughput_mb_s"],
        "emulator_cpu_s": tree_cpu(emulator) - emulator_cpu0,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("devices verified", lambda r: f"{r['verified']}/{r['devices']}"),
        ("exit code", lambda r: str(r["exit_code"])),
        ("wall s, devices", lambda r: f"{r['wall_s_devices']:.2f}"),
        ("wall s, command", lambda r: f"{r['wall_s_command']:.2f}"),
        ("CPU s (user+sys, all)", lambda r: f"{r['cpu_s']:.2f}"),
        ("  user / sys", lambda r: f"{r['cpu_user_s']:.2f} / {r['cpu_sys_s']:.2f}"),
        ("CPU ms per device", lambda r: f"{r['cpu_ms_per_device']:.2f}"),
        ("goodput MB/s", lambda r: f"{r['goodput_mb_s']:.1f}"),
        ("emulator CPU s", lambda r: f"{r['emulator_cpu_s']:.2f}"),
    ]
    head = f"{'':24}" + "".join(f"{r['engine']:>26}" for r in results)
    lines = [head] + [f"{label:24}" + "".join(f"{cell(r):>26}" for r in results) for label, cell in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--size", default="256KiB")
    parser.add_argument(
        "--block-sizes", default="4KiB", help="Comma-separated: every engine runs at each (one provisioning)."
    )
    parser.add_argument("--connect-rate", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=1, help="Run both engines this many times, alternating.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory (reports, manifest, logs).")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-locust-"))
    iot, env = start_local_iot(work)
    try:
        manifest = provision(work, env, opts.devices, opts.size)
        emulator = psutil.Process(iot.pid)
        results = []
        for block_size in opts.block_sizes.split(","):
            common = ["--manifest", str(manifest), "--block-size", block_size, "--connect-rate", str(opts.connect_rate)]
            for n in range(1, opts.rounds + 1):
                tag = f" #{n}" if opts.rounds > 1 else ""
                asyncio_args = ["fleet", *common]
                result = run_fleet(
                    f"asyncio, 1 process{tag}", asyncio_args, env, work / f"asyncio-{block_size}-{n}", emulator
                )
                results.append({**result, "block_size": block_size})
                locust_args = ["fleet", "--engine", "locust", *common, "--processes", str(opts.processes)]
                name = f"locust, {opts.processes} processes{tag}"
                result = run_fleet(name, locust_args, env, work / f"locust-{block_size}-{n}", emulator)
                results.append({**result, "block_size": block_size})
    finally:
        iot.send_signal(signal.SIGTERM)
        iot.wait(timeout=60)
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{opts.devices} devices x {opts.size}, connect rate {opts.connect_rate:g}/s, "
          f"{os.cpu_count()} cores")  # fmt: skip
    for block_size in opts.block_sizes.split(","):
        print(f"\n{block_size} blocks")
        print(table([r for r in results if r["block_size"] == block_size]))
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")
    if opts.keep:
        print(f"work directory: {work}")


if __name__ == "__main__":
    main()
