"""Codec micro-benchmark: the emulator's data path (encode_data_block) against cbor2, and the device's decode.

Run: ``.venv/bin/python bench/bench_codec.py [--quick]``. Prints microseconds per message for each block size.
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

import cbor2

from device_sim.protocol import Format, decode_data_block, encode_data_block


def per_call_us(func: Callable[[], object], budget_s: float) -> float:
    timer = timeit.Timer(func)
    number, elapsed = timer.autorange()
    repeat = max(3, int(budget_s / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=min(repeat, 7), number=number)) / number * 1e6


def cases(size: int) -> list[tuple[str, Callable[[], object]]]:
    payload = os.urandom(size)
    doc = {"c": "rdy", "f": 0, "i": 1234, "l": size, "p": payload}
    ours_cbor = encode_data_block(Format.CBOR, 0, 1234, payload, client_token="rdy")
    assert ours_cbor == cbor2.dumps(doc, indefinite_containers=True)
    ours_json = encode_data_block(Format.JSON, 0, 1234, payload, client_token="rdy")
    return [
        ("encode_data_block cbor", lambda: encode_data_block(Format.CBOR, 0, 1234, payload, "rdy")),
        ("cbor2.dumps indefinite", lambda: cbor2.dumps(doc, indefinite_containers=True)),
        ("cbor2.dumps definite", lambda: cbor2.dumps(doc)),
        ("encode_data_block json", lambda: encode_data_block(Format.JSON, 0, 1234, payload, "rdy")),
        ("decode_data_block cbor", lambda: decode_data_block(ours_cbor, Format.CBOR)),
        ("cbor2.loads", lambda: cbor2.loads(ours_cbor)),
        ("decode_data_block json", lambda: decode_data_block(ours_json, Format.JSON)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (less precise)")
    args = parser.parse_args()
    budget = 0.05 if args.quick else 0.5
    print(f"{'operation':<26}{'block':>8}{'us/message':>12}")
    for size in (256, 4096, 131072):
        for name, func in cases(size):
            print(f"{name:<26}{size:>8}{per_call_us(func, budget):>12.2f}")


if __name__ == "__main__":
    main()
