#!/usr/bin/env bash
# The headline measurements of Plush, in one run. See benches/README.md.
#
#   benches/run.sh [--quick] [--json]
#
#   relay_msgs_per_s        core relay: broadcasts relayed per second by a Node with 12 children,
#                           in process, one core, one frame per call (examples/relay_loop.rs)
#   relay_batch_msgs_per_s  the same, as the mio driver feeds a relay: reads of 1,638 frames,
#                           each one batch (relay_loop --batch)
#   allocs_per_relayed_msg  allocations per relayed broadcast in the core, steady state
#                           (examples/relay_allocs_count.rs, counting global allocator)
#   mio_relay_vs_baseline   frames/s of a bare mio forwarder / frames/s of the plush-mio relay,
#                           1 parent -> relay -> 12 children on loopback (examples/mio_relay.rs);
#                           every link of the relay is sealed (the secure channel), the forwarder's
#                           are plaintext
#   mio_relay_secure_vs_baseline_1024_bytes
#                           the same with 1 KiB frames (a job's announcement), target <= 3.0
#   secure_relay_msgs_per_s 1 KiB broadcasts per second through the sealed relay (each opened once
#                           and sealed again for each of 12 children)
#   handshake_us            median time from TCP connect to a sealed link, on loopback, against a
#                           real client (examples/handshake.rs; also handshake_p90_us, crypto_us)
#   sim_events_per_s        simulator: `plush sim --nodes 10000 --json --seed 424242`
#                           (without --quick, 100,000 nodes too: sim_100k_events_per_s)
#
# mio_relay_vs_baseline is measured with the smallest broadcast frames (10 bytes), where the
# per-frame costs weigh most. Without --quick, the ratio is also measured with 1 KiB, 16 KiB and
# 64 KiB frames: mio_relay_vs_baseline_1024_bytes, _16384_bytes and _65548_bytes; and against a
# stronger baseline that reads (and writes) 256 KiB at a time instead of 64 KiB:
# mio_relay_vs_baseline_256k_read.
#
# --quick  shorter runs (within 5 minutes on 2 cores, build included)
# --json   only the JSON line on stdout (progress goes to stderr)
#
# The last line on stdout is always one JSON object with the figures. Builds with
# `cargo build --release`, into $CARGO_TARGET_DIR if set, else target/.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

quick=0
json=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --json) json=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-target}"
started=$SECONDS

# Human lines go to fd 3: stdout, or stderr with --json (also from inside $(...)).
if [ "$json" = 1 ]; then exec 3>&2; else exec 3>&1; fi
say() {
    printf '%s\n' "$*" >&3
}
tmp=$(mktemp "${TMPDIR:-/tmp}/plush-run.XXXXXX")
trap 'rm -f "$tmp"' EXIT

# The number after "key": in a JSON line.
json_field() {
    sed -n "s/.*\"$1\": *\([-0-9.eE+]*\|null\).*/\1/p" | tail -n 1
}

say "== build: cargo build --release (target dir: $target)"
cargo build --release --quiet -p plush --bin plush >&2
cargo build --release --quiet -p plush-benches --example relay_loop --example relay_allocs_count \
    --example mio_relay --example handshake >&2
examples="$target/release/examples"

if [ "$quick" = 1 ]; then relay_n=2000000; else relay_n=5000000; fi
say "== core relay: $examples/relay_loop $relay_n"
relay_msgs_per_s=$("$examples/relay_loop" "$relay_n" | tail -n 1)
say "   $relay_msgs_per_s broadcasts relayed per second (12 children, one core)"
say "== core relay in batches: $examples/relay_loop $((relay_n * 4)) --batch"
relay_batch_msgs_per_s=$("$examples/relay_loop" "$((relay_n * 4))" --batch | tail -n 1)
say "   $relay_batch_msgs_per_s broadcasts relayed per second (reads of 1,638 frames)"

say "== core allocations: $examples/relay_allocs_count 100000"
allocs_line=$("$examples/relay_allocs_count" 100000 2>/dev/null | tail -n 1)
allocs_per_relayed_msg=$(printf '%s\n' "$allocs_line" | json_field allocs_per_relayed_msg)
say "   $allocs_line"

if [ "$quick" = 1 ]; then mio_args=(--quick); else mio_args=(--diagnose); fi
say "== mio relay vs bare forwarder: $examples/mio_relay ${mio_args[*]}"
"$examples/mio_relay" "${mio_args[@]}" | tee "$tmp" | sed 's/^/   /' >&3
mio_ratio=$(tail -n 1 "$tmp" | json_field ratio)
# 1 KiB frames (a job's announcement): the price of sealing, where it weighs most per byte.
if [ "$quick" = 1 ]; then k_args=(--quick); else k_args=(--rounds 3 --seconds 2); fi
say "== sealed mio relay vs bare plaintext forwarder, 1024-byte frames: $examples/mio_relay ${k_args[*]} --frame-bytes 1024"
"$examples/mio_relay" "${k_args[@]}" --frame-bytes 1024 | tee "$tmp" | tail -n 2 | head -n 1 | sed 's/^/   /' >&3
secure_1k=$(tail -n 1 "$tmp" | json_field ratio)
secure_relay_msgs_per_s=$(tail -n 1 "$tmp" | json_field plush_frames_per_s)
say "== handshake: $examples/handshake"
"$examples/handshake" | tee "$tmp" | tail -n 2 | head -n 1 | sed 's/^/   /' >&3
handshake_us=$(tail -n 1 "$tmp" | json_field handshake_us)
handshake_p90_us=$(tail -n 1 "$tmp" | json_field handshake_p90_us)
crypto_us=$(tail -n 1 "$tmp" | json_field crypto_us)
# Without --quick, the same at the other sizes real traffic has: chunks of a push (16 KiB, and
# the largest broadcast, 64 KiB).
sizes=""
if [ "$quick" = 0 ]; then
    for bytes in 16384 65548; do
        say "== mio relay vs bare forwarder, $bytes-byte frames: $examples/mio_relay --rounds 2 --seconds 2 --frame-bytes $bytes"
        "$examples/mio_relay" --rounds 2 --seconds 2 --frame-bytes "$bytes" | tee "$tmp" | tail -n 2 | head -n 1 | sed 's/^/   /' >&3
        sizes="$sizes, \"mio_relay_vs_baseline_${bytes}_bytes\": $(tail -n 1 "$tmp" | json_field ratio)"
    done
    say "== mio relay vs a baseline reading 256 KiB at a time: $examples/mio_relay --rounds 3 --seconds 2 --baseline-read 262144"
    "$examples/mio_relay" --rounds 3 --seconds 2 --baseline-read 262144 | tee "$tmp" | tail -n 2 | head -n 1 | sed 's/^/   /' >&3
    sizes="$sizes, \"mio_relay_vs_baseline_256k_read\": $(tail -n 1 "$tmp" | json_field ratio)"
fi

sim() {
    local nodes=$1 out status=0
    say "== simulator: $target/release/plush sim --nodes $nodes --json --seed 424242"
    out=$("$target/release/plush" sim --nodes "$nodes" --json --seed 424242 2>/dev/null) || status=$?
    if [ "$status" != 0 ]; then
        say "   warning: plush sim exited with status $status (a phase did not converge)"
    fi
    local eps
    eps=$(printf '%s\n' "$out" | json_field events_per_s)
    say "   $(printf '%s\n' "$out" | json_field events) events in $(printf '%s\n' "$out" | json_field wall_ms) ms: $(printf '%.0f' "$eps") events/s"
    printf '%s\n' "$eps"
}
sim_events_per_s=$(sim 10000)
extra=""
if [ "$quick" = 0 ]; then
    sim_100k=$(sim 100000)
    extra=", \"sim_100k_events_per_s\": $(printf '%.0f' "$sim_100k")$sizes"
fi

say "== done in $((SECONDS - started)) s"
printf '{"relay_msgs_per_s": %.0f, "allocs_per_relayed_msg": %s, "mio_relay_vs_baseline": %s, "sim_events_per_s": %.0f, "relay_batch_msgs_per_s": %.0f, "mio_relay_secure_vs_baseline_1024_bytes": %s, "secure_relay_msgs_per_s": %.0f, "handshake_us": %s, "handshake_p90_us": %s, "handshake_crypto_us": %s%s}\n' \
    "$relay_msgs_per_s" "$allocs_per_relayed_msg" "$mio_ratio" "$sim_events_per_s" "$relay_batch_msgs_per_s" \
    "$secure_1k" "$secure_relay_msgs_per_s" "$handshake_us" "$handshake_p90_us" "$crypto_us" "$extra"
