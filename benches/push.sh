#!/usr/bin/env bash
# push.sh [--json] [--hosts N] [--mib M]: `plush push` of one file to N local hosts, through the
# tree and through a star.
#
# Builds the release `plush` binary (cargo build --release -p plush; incremental, so cheap when
# it is up to date; or takes PLUSH=/path/to/plush), writes M MiB of random data (default 10)
# and pushes it with `plush push --local N --json` (default N = 200) twice, each time into a
# fresh directory of its own:
#   tree   the default degree (12): every member forwards each chunk to its children
#   star   --degree N+1 (N < 1024): every client is the root's child, so the root sends N-1
#          copies (the controller still sends one copy, to the root)
# Each run must exit 0 with "ok" equal to N in its summary (each host checked the SHA-256 of
# its copy before renaming it into place), and the file in the destination must match the
# source (sha256sum) with no temporary file left beside it; otherwise the script fails loudly.
#
# Stdout: a table (none with --json; progress goes to stderr), then, always as its last line,
#   {"hosts", "bytes", "tree_s", "star_s", "controller_bytes_tree", "controller_bytes_star"}
# with the seconds from each summary's push_ms (first chunk to last result, at the
# controller) and the controller's bytes from its controller_bytes. Exit status 0 when both
# runs were verified, 1 otherwise, 2 for a usage error.
#
# Raises `ulimit -n` to its hard limit (each client and the controller hold sockets). Every
# process started is cleaned up on exit, on an error and on INT/TERM: a running plush is killed
# by its pid, then any client still naming its key file (plush-key-<pid>-..., checked in
# /proc/PID/cmdline) by pid; the temporary directory is removed.

set -euo pipefail

json=0
hosts=200
mib=10
usage="usage: push.sh [--json] [--hosts N] [--mib M]"
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json=1 ;;
        --hosts)
            hosts=${2:-}
            shift
            ;;
        --mib)
            mib=${2:-}
            shift
            ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "push.sh: unknown argument $1 ($usage)" >&2
            exit 2
            ;;
    esac
    shift
done
if ! [[ $hosts =~ ^[0-9]+$ ]] || [ "$hosts" -lt 2 ] || [ "$hosts" -gt 1023 ]; then
    echo "push.sh: --hosts takes 2 to 1023 (the star needs a degree above it, at most 1024) ($usage)" >&2
    exit 2
fi
if ! [[ $mib =~ ^[0-9]+$ ]] || [ "$mib" -lt 1 ]; then
    echo "push.sh: --mib takes a whole number of MiB, at least 1 ($usage)" >&2
    exit 2
fi

# Progress and the table: to stderr with --json, so that stdout holds only the JSON line.
say() {
    if [ "$json" = 1 ]; then echo "$*" >&2; else echo "$*"; fi
}
fail() {
    echo "push.sh: FAILED: $*" >&2
    exit 1
}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ulimit -n "$(ulimit -Hn)" 2> /dev/null || true

if [ -n "${PLUSH:-}" ]; then
    plush=$PLUSH
else
    echo "push.sh: building the release plush binary" >&2
    cargo build --release -p plush >&2
    target_dir=${CARGO_TARGET_DIR:-}
    if [ -z "$target_dir" ]; then
        target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    fi
    plush=${target_dir:-$root/target}/release/plush
fi
[ -x "$plush" ] || fail "$plush is not an executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/plush-push-bench.XXXXXX")
plush_pid=

# Whether process $1 is a client of the plush run $plush_pid: its command line names the run's
# key file.
ours() {
    local cmdline
    cmdline=$({ tr '\0' ' ' < "/proc/$1/cmdline"; } 2> /dev/null) || return 1
    [[ $cmdline == *" client "*"plush-key-$plush_pid-"* ]]
}

# Kill the running plush (if any) and whatever clients of it are left.
stop_run() {
    [ -n "$plush_pid" ] || return 0
    if kill -0 "$plush_pid" 2> /dev/null; then
        echo "push.sh: stopping plush (pid $plush_pid)" >&2
        kill -TERM "$plush_pid" 2> /dev/null || true
        for _ in $(seq 50); do
            kill -0 "$plush_pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$plush_pid" 2> /dev/null || true
    fi
    wait "$plush_pid" 2> /dev/null || true
    local left=() d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        if ours "$p"; then left+=("$p"); fi
    done
    if [ ${#left[@]} -gt 0 ]; then
        echo "push.sh: killing ${#left[@]} client(s) left running" >&2
        for p in "${left[@]}"; do kill -KILL "$p" 2> /dev/null || true; done
    fi
    rm -f "${TMPDIR:-/tmp}/plush-key-$plush_pid-"*
    plush_pid=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +eu
    stop_run
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

src=$work/payload.bin
head -c "$((mib << 20))" /dev/urandom > "$src"
bytes=$(stat -c %s "$src")
src_sha=$(sha256sum "$src" | cut -d' ' -f1)
say "push.sh: $hosts local hosts, $mib MiB ($bytes bytes, sha256 ${src_sha:0:16}...), plush $plush"

# The value of number field $1 in the JSON line $2.
field() {
    sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" <<< "$2"
}

# run LABEL [plush push flags...]: push into $work/LABEL/, verify; sets push_ms and ctl_bytes.
run() {
    local label=$1
    shift
    local dest=$work/$label
    mkdir "$dest"
    "$plush" push --local "$hosts" --json "$@" "$src" "$dest/" > "$work/$label.out" 2> "$work/$label.err" &
    plush_pid=$!
    local rc=0
    wait "$plush_pid" || rc=$?
    # The run dismantled its clients; any left would be a leak.
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        if ours "$p"; then
            stop_run
            fail "$label: plush left clients running"
        fi
    done
    plush_pid=
    local summary
    summary=$(grep '^{"summary"' "$work/$label.out" | tail -n 1 || true)
    if [ "$rc" != 0 ] || [ -z "$summary" ]; then
        tail -n 20 "$work/$label.err" >&2
        fail "$label: plush push exited $rc (summary: ${summary:-none})"
    fi
    local ok
    ok=$(field ok "$summary")
    push_ms=$(field push_ms "$summary")
    ctl_bytes=$(field controller_bytes "$summary")
    [ "$ok" = "$hosts" ] || fail "$label: ok = ${ok:-?}, expected $hosts: $summary"
    [ -n "$push_ms" ] && [ -n "$ctl_bytes" ] || fail "$label: no push_ms or controller_bytes in $summary"
    [ "$(field bytes "$summary")" = "$bytes" ] || fail "$label: bytes in the summary: $summary"
    local got
    got=$(sha256sum "$dest/payload.bin" 2> /dev/null | cut -d' ' -f1 || true)
    [ "$got" = "$src_sha" ] || fail "$label: $dest/payload.bin has sha256 ${got:-none}, expected $src_sha"
    local names
    names=$(ls -A "$dest")
    [ "$names" = "payload.bin" ] || fail "$label: $dest holds more than the file: $names"
    echo "push.sh: $label: verified ($ok/$hosts ok, push_ms $push_ms, controller_bytes $ctl_bytes)" >&2
    rm -rf "$dest"
}

run tree
tree_ms=$push_ms
tree_bytes=$ctl_bytes
run star --degree "$((hosts + 1))"
star_ms=$push_ms
star_bytes=$ctl_bytes

secs() { awk -v ms="$1" 'BEGIN { printf "%.3f", ms / 1000 }'; }
mibs() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
rate() { awk -v b="$bytes" -v n="$hosts" -v ms="$1" 'BEGIN { if (ms > 0) printf "%.0f", b * n / 1048576 / (ms / 1000); else printf "-" }'; }

say ""
say "$(printf '%-6s %10s %14s %22s' layout seconds 'MiB delivered/s' 'controller sent MiB')"
say "$(printf '%-6s %10s %14s %22s' tree "$(secs "$tree_ms")" "$(rate "$tree_ms")" "$(mibs "$tree_bytes")")"
say "$(printf '%-6s %10s %14s %22s' star "$(secs "$star_ms")" "$(rate "$star_ms")" "$(mibs "$star_bytes")")"
say "(MiB delivered/s: $hosts copies of $mib MiB over the push time)"

printf '{"hosts": %d, "bytes": %d, "tree_s": %s, "star_s": %s, "controller_bytes_tree": %d, "controller_bytes_star": %d}\n' \
    "$hosts" "$bytes" "$(secs "$tree_ms")" "$(secs "$star_ms")" "$tree_bytes" "$star_bytes"
