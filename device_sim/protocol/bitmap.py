"""Block bitmaps (docs/protocol.md section 3).

Byte k covers blocks ``offset + 8k .. offset + 8k + 7``; within a byte the least significant bit is the lowest
block. Example (AWS docs): blocks 20, 21, 24, 43 at offset 20 -> ``13 00 80``.
"""

from __future__ import annotations

from collections.abc import Iterable

from device_sim.protocol.errors import LocalProtocolError


def encode_bitmap(blocks: Iterable[int], offset: int, total_blocks: int | None = None) -> bytes:
    """Bitmap of absolute block indices ``blocks`` relative to ``offset``.

    The bitmap is as short as the highest block needs. With ``total_blocks`` (blocks in the file), a block at or
    past the end raises LocalProtocolError, so no bit past the end of the file is ever set.
    """
    wanted = sorted(set(blocks))
    if not wanted:
        return b""
    if wanted[0] < offset:
        raise LocalProtocolError(f"block {wanted[0]} lies before the bitmap offset {offset}")
    if total_blocks is not None and wanted[-1] >= total_blocks:
        raise LocalProtocolError(f"block {wanted[-1]} lies past the end of the file ({total_blocks} blocks)")
    out = bytearray((wanted[-1] - offset) // 8 + 1)
    for block in wanted:
        rel = block - offset
        out[rel >> 3] |= 1 << (rel & 7)
    return bytes(out)


def decode_bitmap(bitmap: bytes, offset: int = 0) -> list[int]:
    """Absolute block indices whose bits are set, ascending."""
    out: list[int] = []
    for k, byte in enumerate(bitmap):
        if not byte:
            continue
        base = offset + 8 * k
        for bit in range(8):
            if byte & (1 << bit):
                out.append(base + bit)
    return out


def highest_bit(bitmap: bytes) -> int | None:
    """Relative index of the highest set bit, or None when no bit is set."""
    for k in range(len(bitmap) - 1, -1, -1):
        byte = bitmap[k]
        if byte:
            return 8 * k + byte.bit_length() - 1
    return None


def bitmap_to_hex(bitmap: bytes, *, prefix: bool = True) -> str:
    """JSON form of a bitmap: hex digits, ``0x`` prefix by default (as in the AWS docs example)."""
    return ("0x" if prefix else "") + bitmap.hex()


def bitmap_from_hex(text: str) -> bytes:
    """Parse a JSON bitmap: optional ``0x``/``0X``, hex digits of either case, even length.

    Raises ValueError on anything else (the codec turns it into the right AWS code).
    """
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(digits) % 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"not an even-length hex string: {text!r}")
    return bytes.fromhex(digits)
