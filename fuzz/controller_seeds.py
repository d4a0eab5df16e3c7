#!/usr/bin/env python3
"""Seeds for the controller_inputs fuzz target: short scripts that reach what a fuzzer finds
slowly (a census that finds members lost unreported, results and their acknowledgements, a
partial barrier and a late entry, launches and retries).

`python3 fuzz/controller_seeds.py DIR`

The bytes are what `arbitrary` 1.x reads as the target's `Input`: integers little-endian; a bool
is a byte's low bit; an `Option` a bool, then the value; a `Vec` a continuation bool before each
element (a false one ends it); an enum variant a u32 `x` with index `(x * count) >> 32`. The
enums below must list their variants as fuzz_targets/controller_inputs.rs does: after a change
there, the seeds still run, but as other scripts.
"""

import struct
import sys
from pathlib import Path

STEP = ["Frame", "Raw", "Link", "Launched", "Advance", "Timeout", "AddHosts", "Run", "Cancel",
        "Forget", "Barrier", "Dismantle", "Attach", "Tree"]
MSG = ["SetRoot", "Joined", "InviteFailed", "Disconnected", "Participants", "Results", "Output",
       "BarrierEnter", "SetCtrl", "SetPeer", "GetStatus", "Status", "Forget", "Disconnect", "Census",
       "Ack", "Cancel", "BarrierRelease", "Heartbeat", "JoinReject"]
STATUS = ["Exited", "Signaled", "TimedOut", "Cancelled", "SpawnFailed"]
LINK = ["Connected", "ConnectFailed", "Closed"]


def variant(names, name):
    i, n = names.index(name), len(names)
    return struct.pack("<I", -(-(i << 32) // n))


def u8(x):
    return bytes([x & 0xFF])


def u16(x):
    return struct.pack("<H", x)


def boolean(b):
    return u8(1 if b else 0)


def option(v):
    return boolean(False) if v is None else boolean(True) + v


def vec(items):
    return b"".join(boolean(True) + it for it in items) + boolean(False)


def node_set(runs):
    """Runs of (first node, length - 1)."""
    return vec(u8(a) + u8(b) for a, b in runs)


def msg(name, *fields):
    return variant(MSG, name) + b"".join(fields)


def step(name, *fields):
    return variant(STEP, name) + b"".join(fields)


def frame(m, frm=None, connect=True):
    """A message from `frm` (None: the root)."""
    return step("Frame", option(None if frm is None else u8(frm)), boolean(connect), m)


def advance(n, secs=True, alive=True):
    return step("Advance", u16(n), boolean(secs), boolean(alive))


def setup(hosts, max_invitations=3, max_jobs=7, failed_after=2, launch_at_root=False):
    # seed, then the fields as the target reads them (it adds 1 to the first three, modulo).
    return (struct.pack("<Q", 7) + u8(max_invitations - 1) + u8(max_jobs - 1) + u8(failed_after - 1)
            + boolean(launch_at_root) + vec(u8(h) for h in hosts))


def script(hosts, steps, **cfg):
    # The last field (the steps) is read as "the rest": the same continuation bytes.
    return setup(hosts, **cfg) + vec(steps)


TREE = step("Tree", u8(0), node_set([(1, 3)]))  # root 0, members 1..4

SEEDS = {
    # A member lost, the census the controller then asks for misses others: they are checked.
    "census_unlisted": script([1, 2, 3, 4], [
        TREE,
        frame(msg("Disconnected", u8(1), boolean(True))),
        advance(3),
        frame(msg("Participants", node_set([(2, 0)]), boolean(True))),
    ]),
    # A job: results in two parts (one node twice), completion, acknowledgements, cancel, forget.
    "job_results": script([1, 2, 3, 4], [
        TREE,
        step("Run", u8(1), boolean(False), boolean(False), option(None), boolean(True)),
        frame(msg("Output", u8(1), u8(2), vec([u8(0x78)]))),
        frame(msg("Results", u8(1), vec([variant(STATUS, "Exited") + u8(0) + boolean(False)
                                         + vec([u8(0x6F), u8(0x6B)]) + node_set([(1, 1)])]), boolean(False))),
        frame(msg("Results", u8(1), vec([variant(STATUS, "TimedOut") + boolean(True) + vec([])
                                         + node_set([(2, 2)])]), boolean(True))),
        step("Timeout", boolean(True)),
        advance(6),
        step("Cancel", u8(1)),
        step("Forget", u8(1)),
    ]),
    # A barrier over every member: some enter, the timeout releases it partially, one is late.
    "barrier_partial": script([1, 2, 3, 4], [
        TREE,
        step("Barrier", u8(0), boolean(False), option(None), u8(100), u16(1000)),
        frame(msg("BarrierEnter", u8(0), node_set([(1, 1)]))),
        advance(2),
        frame(msg("BarrierEnter", u8(0), node_set([(3, 0)]))),
    ]),
    # No tree yet: the first host does not answer, is launched, fails to launch, is retried.
    "launch_retry": script([1, 2], [
        step("Link", u8(1), variant(LINK, "ConnectFailed")),
        step("Launched", u8(1), boolean(True)),
        step("Link", u8(1), variant(LINK, "ConnectFailed")),
        advance(6, alive=False),
        step("Launched", u8(1), boolean(False)),
        advance(400, alive=False),
    ]),
    # A tree whose root invites the others: some cannot be reached, a root change, a failure.
    "invite_through_root": script([0, 1, 2, 3, 4, 5], [
        step("Link", u8(0), variant(LINK, "Connected")),
        frame(msg("SetRoot", option(None)), frm=0),
        frame(msg("Joined", u8(0)), frm=0),
        frame(msg("InviteFailed", u8(1))),
        frame(msg("Joined", u8(2))),
        frame(msg("SetRoot", option(None)), frm=2),
        frame(msg("Disconnected", u8(2), boolean(True))),
        frame(msg("Disconnected", u8(0), boolean(True))),
        step("Timeout", boolean(True)),
    ], failed_after=1),
}


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/controller_inputs")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (out / f"seed_{name}").write_bytes(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
