#!/usr/bin/env bash
# The seed's experiments (Topilski 2008, figures 4.1 to 4.5), reproduced with the simulator and
# local clusters, as SVG plots. See benches/README.md.
#
#   benches/figures.sh [--quick] [--out DIR] [--max-nodes N] [--jobs J] [--release] [-- FLAGS]
#
#   --quick      a tiny sweep (N = 10, 30, 100; local clusters of 10 and 30; 3 seeds): every
#                plot in about a minute, build included. For CI.
#   --out DIR    where the SVG, CSV and TXT files go (default docs/figures)
#   --max-nodes  the largest N of the full sweep (default 100000; up to 1000000)
#   --jobs J     simulations at once (default 2)
#   --release    use release binaries (fat LTO: slow to build) instead of the test profile's
#   -- FLAGS     passed to the figures binary (--resume, --append, --replot, --large-only,
#                --min-nodes N)
#
# The sweep runs `plush sim --json` (tree and star, several seeds per point) and
# `plush run --local N --json -- true`; the figures binary of plush-benches
# (benches/src/bin/figures.rs) writes NAME.csv (every run), NAME.txt (the exact commands) and
# NAME.svg (median, bars from min to max) for each plot, and runs.csv (every command with its
# wall time and peak RSS).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

quick=()
out=docs/figures
max_nodes=100000
jobs=2
profile=(--profile test)
bindir=debug
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=(--quick) ;;
        --out) out=$2; shift ;;
        --max-nodes) max_nodes=$2; shift ;;
        --jobs) jobs=$2; shift ;;
        --release) profile=(--release); bindir=release ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) echo "figures.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-target}"
echo "== build: cargo build ${profile[*]} -p plush --bin plush -p plush-benches --bin figures" >&2
cargo build "${profile[@]}" --quiet -p plush --bin plush -p plush-benches --bin figures >&2
mkdir -p "$out"
# A local cluster of N clients holds about 2 N descriptors at the controller.
ulimit -n 65536 2>/dev/null || true
started=$SECONDS
"$target/$bindir/figures" --plush "$target/$bindir/plush" --out "$out" --max-nodes "$max_nodes" \
    --jobs "$jobs" "${quick[@]}" "${extra[@]}"
echo "figures.sh: done in $((SECONDS - started)) s; plots in $out" >&2
