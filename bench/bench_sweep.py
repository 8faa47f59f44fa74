"""Block-size sweep under AWS's per-connection pacing: 10 devices x 1 MiB at 1, 4, 16, 64 and 128 KiB blocks.

Run: ``.venv/bin/python bench/bench_sweep.py [--rounds 3] [--devices 10] [--size 1MiB]
[--block-sizes 1KiB,4KiB,16KiB,64KiB,128KiB] [--latency-ms 40] [--no-tls] [--json out.json]``. About 20 s per round
(plus a few seconds to start and provision). ``--work-dir W --keep-running`` leaves local-iot and the things in
place, and ``--reuse W`` measures again without starting or provisioning anything (the latency and quotas are then
the running local-iot's, printed in the header).

How it works: ``local-iot up --latency-ms 40 --quotas aws`` runs as a child process (AWS's limits of 100 publishes/s
and 512 KiB/s per connection, a 40 ms round trip), so the emulator does not share a GIL with the devices;
``provisioner up`` creates a 1 MiB stream and 10 things with certificates (not timed). Each round then runs the
project's own sweep, ``device-sim sweep --manifest run.json --block-sizes ... --quiet --report-dir
sweep-<time>/round-N`` (mutual TLS, CBOR, the engine's defaults), as a child process of this script, and reads the
points of its ``summary.json``: per block size the median and p90 of the devices' download times, the fleet's wall
time, the timeouts, duplicates and metered messages. ``--rounds N`` repeats the sweep N times against the same
emulator and things; the table gives every round's figures and their range (min-max). The sweeps' own tables and
logs stay in the work directory (``--work-dir``).

Targets (docs/engine.md, "Paced big blocks"): 0 timeouts at 64 and 128 KiB, and the median download time at
128 KiB within 15 % of the one at 64 KiB (128 KiB / 64 KiB <= 1.15), 64 KiB being measured in the same round.
Every round must meet them. Before the engine's idle deadlines waited one block's worth of the answer rate
(``answer_rate``), 128 KiB took 5.75 s with 180 timeouts against 2.0 s at 64 KiB.

The output is plain text (no control codes, piped or not); progress goes to stderr. Exit status 0 when every
target is met in every round, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fleet import LocalIotProcess, _size, provision  # noqa: E402  # the fleet bench's, shared

TARGET_RATIO = 1.15  # 128 KiB median / 64 KiB median
BASELINE, BIG = 64 * 1024, 128 * 1024
DEFAULT_BLOCKS = "1KiB,4KiB,16KiB,64KiB,128KiB"


def _sizes(text: str) -> list[int]:
    return [_size(part.strip()) for part in text.split(",") if part.strip()]


def _label(block: int) -> str:
    from device_sim.results.sweep import format_size

    return format_size(block)


# ------------------------------------------------------------------------------------------------ child processes


_POINT_LINE = re.compile(r"^\[\d+/\d+\] ")


def run_sweep(iot: LocalIotProcess, work: Path, manifest: Path, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One ``device-sim sweep`` in a child process; its points as read from ``summary.json``, and its wall time."""
    report_dir = work / f"round-{n}"  # work: this invocation's sweep-<time> directory
    cmd = [sys.executable, "-m", "device_sim", "sweep", "--manifest", str(manifest), "--devices", str(args.devices)]
    cmd += ["--block-sizes", ",".join(_label(b) for b in args.block_sizes), "--connect-rate", str(args.connect_rate)]
    cmd += ["--report-dir", str(report_dir), "--quiet"]
    if args.no_tls:
        cmd.append("--no-tls")
    (work / f"round-{n}.cmd").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    with (work / f"round-{n}.out").open("w") as out, (work / f"round-{n}.err").open("w") as err:
        proc = subprocess.Popen(cmd, env=iot.env, cwd=work, stdout=out, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # "[2/5] 4KiB: 10/10 verified in 2.31 s" lines, as they come
                err.write(line)
                if _POINT_LINE.match(line):
                    print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
            code = proc.wait()
        except BaseException:  # Ctrl-C: stop the sweep by its PID (it writes its reports on SIGTERM)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            raise
    elapsed = time.perf_counter() - t0
    summary = report_dir / "summary.json"
    if code not in (0, 1) or not summary.exists():  # 1: a device failed; the reports are still there
        raise RuntimeError(f"device-sim sweep exited with {code}; see {work}/round-{n}.err")
    doc = json.loads(summary.read_text())
    points = {}
    for p in (doc.get("sweep") or {}).get("points") or []:
        s = p["summary"]
        d = s.get("download_s") or {}
        points[str(p["block_size"])] = {
            "label": p["label"],
            "devices": s["devices"],
            "verified": s["verified"],
            "failures": s.get("failures_by_reason") or {},
            "median_s": d.get("p50"),
            "p90_s": d.get("p90"),
            "wall_s": s["wall_s"],
            "timeouts": s["timeouts"],
            "duplicates": s["duplicates"],
            "re_requests": s["re_requests"],
            "metered_messages": s["metered_messages"],
        }
    return {"exit_code": code, "elapsed_s": elapsed, "load_avg": os.getloadavg(), "points": points}


# ------------------------------------------------------------------------------------------------ figures


def _round_targets(points: dict[str, Any]) -> dict[str, Any]:
    base, big = points.get(str(BASELINE)), points.get(str(BIG))
    out: dict[str, Any] = {
        "timeouts_64": base["timeouts"] if base else None,
        "timeouts_128": big["timeouts"] if big else None,
        "ratio": None,
    }
    if base and big and base["median_s"] and big["median_s"] is not None:
        out["ratio"] = big["median_s"] / base["median_s"]
    ok_verified = all(p["verified"] == p["devices"] for p in (base, big) if p)
    out["ok_timeouts_64"] = out["timeouts_64"] == 0 and ok_verified
    out["ok_timeouts_128"] = out["timeouts_128"] == 0 and ok_verified
    out["ok_ratio"] = out["ratio"] is not None and out["ratio"] <= TARGET_RATIO and ok_verified
    return out


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _range(values: list[Any], fmt: str) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    lo, hi = min(present), max(present)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


COLUMNS = [  # header, key, format, width
    ("median s", "median_s", ".2f", 11),
    ("p90 s", "p90_s", ".2f", 11),
    ("wall s", "wall_s", ".2f", 11),
    ("timeouts", "timeouts", "d", 9),
    ("duplicates", "duplicates", "d", 11),
    ("metered msgs", "metered_messages", ",d", 14),
]


def print_report(report: dict[str, Any]) -> None:
    rounds = report["rounds"]
    la = report["load_avg_start"]
    print()
    print(
        f"{report['devices']} devices x {_label(report['size'])}, latency {report['latency_ms']:g} ms, quotas "
        f"{report['quotas']}, {'plain TCP' if report['no_tls'] else 'mTLS'}, {len(rounds)} round(s) of "
        "device-sim sweep"
    )
    print(f"{report['cpus']} CPUs, load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    header = f"{'block':<7} {'round':<6} {'verified':>9}" + "".join(f" {h:>{w}}" for h, _, _, w in COLUMNS)
    print(header)
    print("-" * len(header))
    for block in report["block_sizes"]:
        key = str(block)
        rows = [r["points"].get(key) for r in rounds]
        for i, p in enumerate(rows, 1):
            if p is None:
                print(f"{_label(block):<7} {i:<6} {'-':>9}" + "".join(f" {'-':>{w}}" for _, _, _, w in COLUMNS))
                continue
            verified = f"{p['verified']}/{p['devices']}"
            cells = "".join(f" {_fmt(p[k], fmt):>{w}}" for _, k, fmt, w in COLUMNS)
            print(f"{_label(block) if i == 1 else '':<7} {i:<6} {verified:>9}{cells}")
        if len(rounds) > 1:
            present = [p for p in rows if p is not None]
            verified = f"{_range([p['verified'] for p in present], 'd')}/{present[0]['devices']}" if present else "-"
            cells = "".join(f" {_range([p[k] for p in present], fmt):>{w}}" for _, k, fmt, w in COLUMNS)
            print(f"{'':<7} {'range':<6} {verified:>9}{cells}")
    loads = ", ".join(f"{r['load_avg'][0]:.2f}" for r in rounds)
    le = report["load_avg_end"]
    print(f"load average (1 min) after each round: {loads}; at the end {le[0]:.2f} {le[1]:.2f} {le[2]:.2f}")
    print()
    targets = [r["targets"] for r in rounds]
    per_round = len(rounds) > 1
    print("targets (every round):" if per_round else "targets:")
    for what, key, ok_key, fmt in (
        (f"timeouts at {_label(BASELINE)} = 0", "timeouts_64", "ok_timeouts_64", "d"),
        (f"timeouts at {_label(BIG)} = 0", "timeouts_128", "ok_timeouts_128", "d"),
        (f"{_label(BIG)} median / {_label(BASELINE)} median <= {TARGET_RATIO}", "ratio", "ok_ratio", ".3f"),
    ):
        ok = all(t[ok_key] for t in targets)
        values = ", ".join(_fmt(t[key], fmt) for t in targets)
        detail = f"{values}; range {_range([t[key] for t in targets], fmt)}" if per_round else values
        print(f"  {what:<40} {'OK' if ok else 'FAIL':<4}  ({detail})")
    unverified = [
        f"round {i} {p['label']}: {p['devices'] - p['verified']} failed {p['failures']}"
        for i, r in enumerate(rounds, 1)
        for p in r["points"].values()
        if p["verified"] != p["devices"]
    ]
    for line in unverified:
        print(f"  not verified: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="sweeps in this run (the range is across them)")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--size", type=_size, default="1MiB", help="file size (1MiB, 64KiB ...)")
    parser.add_argument("--block-sizes", type=_sizes, default=DEFAULT_BLOCKS, help=f"[{DEFAULT_BLOCKS}]")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="local-iot up --latency-ms [40]")
    parser.add_argument("--quotas", default="aws", help="local-iot up --quotas [aws]")
    parser.add_argument("--connect-rate", type=float, default=100.0, help="device-sim sweep --connect-rate [100]")
    parser.add_argument("--no-tls", action="store_true", help="the broker's plain port [default: mutual TLS]")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep everything here [default: a temp dir]")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--keep-running", action="store_true", help="leave local-iot and the things for --reuse")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a --work-dir whose local-iot still runs (skips provisioning)"
    )
    args = parser.parse_args()
    if args.reuse and args.work_dir:
        parser.error("--reuse is the work dir: drop --work-dir")
    if args.rounds < 1 or args.devices < 1:
        parser.error("--rounds and --devices must be at least 1")
    if BASELINE not in args.block_sizes or BIG not in args.block_sizes:
        parser.error("--block-sizes must include 64KiB and 128KiB (the targets compare them)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up as on Ctrl-C
    load_start = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = (args.reuse or args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        manifest, provision_s = work / "run.json", None
        if args.reuse:
            iot = LocalIotProcess(work / "iot", attach=True)
        else:
            print(
                f"starting local-iot (--latency-ms {args.latency_ms:g} --quotas {args.quotas}) in {work} ...",
                file=sys.stderr,
                flush=True,
            )
            iot = LocalIotProcess(work / "iot", "--latency-ms", str(args.latency_ms), "--quotas", args.quotas)
        keep = args.keep_running or args.reuse is not None
        try:
            if not args.reuse:
                print(
                    f"provisioning {args.devices} things and a {_label(args.size)} stream (not timed) ...",
                    file=sys.stderr,
                    flush=True,
                )
                manifest, provision_s = provision(iot, work, args.devices, args.size, name="sweep")
            runs_dir = work / time.strftime("sweep-%Y%m%d-%H%M%S")  # a --reuse never overwrites an earlier run
            runs_dir.mkdir()
            for n in range(1, args.rounds + 1):
                la = os.getloadavg()[0]
                print(f"  round {n}/{args.rounds}: device-sim sweep (load {la:.2f}) ...", file=sys.stderr, flush=True)
                result = run_sweep(iot, runs_dir, manifest, args, n)
                result["targets"] = _round_targets(result["points"])
                rounds.append(result)
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
        "block_sizes": args.block_sizes,
        "latency_ms": iot.info.get("latency_ms", args.latency_ms),
        "quotas": iot.info.get("quotas", args.quotas),
        "no_tls": args.no_tls,
        "connect_rate": args.connect_rate,
        "provision_s": provision_s,
        "cpus": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "targets": {"timeouts_64": 0, "timeouts_128": 0, "ratio_max": TARGET_RATIO},
        "rounds": rounds,
    }
    report["ok"] = all(t[k] for t in (r["targets"] for r in rounds) for k in t if k.startswith("ok_"))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the sweep and local-iot are stopped by then
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
