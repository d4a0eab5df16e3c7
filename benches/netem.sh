#!/usr/bin/env bash
# netem.sh [--hosts N] [--json] [--loss PCT] [--rate RATE] [--push-mib M] [--heal-after S]
#          [--recovery-runs K] [--scenarios LIST]: real `plush client`s on an emulated network (issue 20).
#
# Runs the `netem` harness (benches/netem/main.rs): N network namespaces on one bridge, with
# addresses from 198.18.0.0/15, a tbf rate limit per host (default 1gbit) and nftables random
# loss (default 0.1 %), the controller in a namespace of its own; the scenarios build, recovery
# (25 % SIGKILL with the root; silent death), partition (two-way, one-way), link_cut (one tree
# link cut both ways, healed), job (through a
# SIGKILL, a partition, a silent death), push (M MiB, default 100, tree against star) and sim
# (`plush sim` with the same N, kill fraction and the measured delay; the median of five
# seeds). Each scenario prints
# one JSON line; everything is torn down at the end, on failure and on Ctrl-C (checked).
#
# Builds the release `plush` binary and the harness (cargo build --release; or takes PLUSH=
# and NETEM= paths). Needs root, iproute2 and nftables: without them it skips (exit 0), except
# under CI=true, where it fails.
#
# Checks (exit 1 when one fails): every survivor in one tree (the harness fails otherwise), no
# job result lost or duplicated, every pushed copy verified (SHA-256). Timings are reported,
# not asserted.
#
# Stdout: the scenario lines (on stderr with --json), then, always as the last line,
#   {hosts, build_ms, recovery_process_ms, recovery_silent_ms, partition_heal_ms, job_lost,
#    job_duplicates, push_tree_s, push_star_s, sim_recovery_process_ms, sim_recovery_silent_ms}

set -euo pipefail

json=0
args=()
hosts=30
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json=1 ;;
        --hosts)
            hosts=${2:-}
            args+=(--hosts "$hosts")
            shift
            ;;
        --loss | --rate | --push-mib | --heal-after | --recovery-runs | --scenarios | --seed)
            args+=("$1" "${2:-}")
            shift
            ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "netem.sh: unknown argument $1" >&2
            exit 2
            ;;
    esac
    shift
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ -z "${PLUSH:-}" ] || [ -z "${NETEM:-}" ]; then
    echo "netem.sh: building the release plush binary and the harness" >&2
    cargo build --release -p plush -p plush-benches --bin plush --example netem >&2
fi
plush=${PLUSH:-$target_dir/release/plush}
netem=${NETEM:-$target_dir/release/examples/netem}
[ -x "$plush" ] && [ -x "$netem" ] || {
    echo "netem.sh: FAILED: $plush or $netem is not an executable" >&2
    exit 1
}
# Absolute: the launcher starts each client from its own host directory.
plush=$(realpath "$plush")
netem=$(realpath "$netem")

out=$(mktemp "${TMPDIR:-/tmp}/plush-netem.XXXXXX")
trap 'rm -f "$out"' EXIT
# The harness handles INT/TERM itself (tears down, exits 130): let it.
rc=0
"$netem" --plush "$plush" "${args[@]}" > "$out" || rc=$?
if [ "$json" = 1 ]; then
    head -n -1 "$out" >&2
else
    cat "$out"
fi
[ "$rc" = 0 ] || {
    echo "netem.sh: FAILED: the harness exited $rc" >&2
    exit "$rc"
}
last=$(tail -n 1 "$out")
case "$last" in
    '{"hosts"'*) ;;
    *)
        # Skipped (no root or tools): nothing to check.
        exit 0
        ;;
esac
python3 - "$last" "$out" << 'EOF'
import json, sys
s = json.loads(sys.argv[1])
lines = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
bad = []
if s["job_lost"] not in (None, 0):
    bad.append(f"job_lost {s['job_lost']}")
if s["job_duplicates"] not in (None, 0):
    bad.append(f"job_duplicates {s['job_duplicates']}")
for l in lines:
    if l.get("scenario") == "push" and l["verified"] != 2 * l["hosts"]:
        bad.append(f"push verified {l['verified']}")
if bad:
    print("netem.sh: FAILED: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
def r(sim, real):
    return "-" if not sim or not real else f"{sim / real:.2f}"
print(f"netem.sh: sim/real recovery: process {r(s['sim_recovery_process_ms'], s['recovery_process_ms'])}, "
      f"silent {r(s['sim_recovery_silent_ms'], s['recovery_silent_ms'])}", file=sys.stderr)
EOF
if [ "$json" = 1 ]; then
    echo "$last"
fi
