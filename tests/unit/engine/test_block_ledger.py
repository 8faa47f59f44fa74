"""BlockLedger.claim: which blocks a new request names, whichever way (a run by slices, or one by one) it finds them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.engine.blocks import MAX_SPAN, BlockLedger

BLOCK = 1024


def _reference(missing: list[bool], window: int) -> tuple[int, ...]:
    """The lowest missing blocks, at most ``window``, all within MAX_SPAN of the first."""
    found = [i for i, m in enumerate(missing) if m]
    if not found:
        return ()
    return tuple(i for i in found if i < found[0] + MAX_SPAN)[:window]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=300).flatmap(
        lambda n: st.tuples(st.lists(st.sampled_from("mhc"), min_size=n, max_size=n), st.just(n))
    ),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=2),
)
def test_a_claim_names_the_lowest_free_blocks_and_counts_what_was_asked_before(
    layout: tuple[list[str], int], window: int, asked_before: int
) -> None:
    """m: missing, h: stored, c: held by an earlier request in flight; asked before: a re-request."""
    marks, total = layout
    ledger = BlockLedger(total * BLOCK, BLOCK)
    ledger.load(i for i, mark in enumerate(marks) if mark == "h")
    for _ in range(asked_before):  # every free block asked for before (claimed, then given back)
        while ledger.claim(window, 0.0, 0, sent=True) is not None:
            pass
        for request in list(ledger.in_flight):
            ledger.release(request)
    held = [i for i, mark in enumerate(marks) if mark == "c"]
    if held:  # one-block requests over every free block, in order; those of the "c" blocks stay in flight
        singles = [ledger.claim(1, 0.0, 0, sent=True) for i, mark in enumerate(marks) if mark != "h"]
        assert [r.blocks if r else None for r in singles] == [(i,) for i, m in enumerate(marks) if m != "h"]
        for request in singles:
            assert request is not None
            if marks[request.blocks[0]] == "m":
                ledger.release(request)
    missing = [mark == "m" for mark in marks]
    expected = _reference(missing, window)

    request = ledger.claim(window, 1.0, 7, sent=False)

    if not expected:
        assert request is None
        return
    assert request is not None
    assert request.blocks == expected and request.outstanding == set(expected)
    assert (request.seq, request.sent_at, request.sent) == (7, 1.0, False)
    assert request.repeated is (asked_before > 0 or bool(held))
    assert request in ledger.in_flight and not set(held) & set(expected)
    # the claimed blocks are no longer free: the next claim takes the ones after them
    after = _reference([m and i not in expected for i, m in enumerate(missing)], window)
    following = ledger.claim(window, 2.0, 8, sent=True)
    assert (following.blocks if following is not None else ()) == after
