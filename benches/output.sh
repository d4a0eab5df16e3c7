#!/usr/bin/env bash
# Output of every byte, measured with the real binary on loopback (issue 25).
#
#   benches/output.sh [--hosts N] [--mib M] [--json]
#
# Two runs of `plush run --local N` (default N = 100, M = 10 MiB per host):
#   1. --stream: every host prints M MiB of its own lines (its address padded to 63 bytes, so
#      the lines of each host are known); the reader is this script, writing to a file.
#      stream_s is from the first line at the reader to plush's exit; stream_mib_per_s is
#      N x M MiB over it (aggregate at the controller); stream_lost_bytes is what the reader
#      did not get (lines counted per host, every line checked to be its host's).
#      controller_rss_kib and client_rss_kib are the largest resident sizes sampled (every
#      0.2 s) while the output flows.
#   2. grouped: every host prints the same M MiB; identical_controller_bytes is the output
#      bytes the controller received (`output_bytes` of the run's JSON summary).
#   2b. grouped, distinct: every host prints M MiB of its own lines (as in 1), grouped; the
#      printout is read by a checker (every body line its host's, all there):
#      distinct_s, distinct_lost_bytes, and the largest resident sizes sampled while it runs,
#      distinct_controller_rss_kib (outputs past 16 MiB wait in a temporary file) and
#      distinct_client_rss_kib.
#
#   3. beside them, when pdsh is installed: the same output as 1 through
#      `pdsh -R exec -f N -w 127.0.0.[1-N]` (pdsh runs each host's command locally, no ssh: an
#      upper bound of pdsh over ssh), read by `wc -l`: pdsh_exec_mib_per_s and
#      pdsh_exec_lost_bytes (null without pdsh).
#
# The last line on stdout is one JSON object:
#   {hosts, bytes_per_host, stream_s, stream_mib_per_s, stream_lost_bytes,
#    identical_controller_bytes, controller_rss_kib, client_rss_kib, distinct_s,
#    distinct_lost_bytes, distinct_controller_rss_kib, distinct_client_rss_kib,
#    pdsh_exec_mib_per_s, pdsh_exec_lost_bytes}
#
# --json  only the JSON line on stdout (progress goes to stderr)
# Builds with `cargo build --release -p plush` unless PLUSH names a binary.
set -euo pipefail

usage="usage: benches/output.sh [--hosts N] [--mib M] [--json]"
hosts=100
mib=10
json=0
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts)
            hosts=${2:-}
            shift 2 || { echo "$usage" >&2; exit 2; }
            ;;
        --mib)
            mib=${2:-}
            shift 2 || { echo "$usage" >&2; exit 2; }
            ;;
        --json)
            json=1
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "output.sh: unknown argument: $1 ($usage)" >&2
            exit 2
            ;;
    esac
done
[[ $hosts =~ ^[0-9]+$ ]] && [ "$hosts" -ge 1 ] && [ "$hosts" -le 250 ] || {
    echo "output.sh: --hosts takes 1 to 250 ($usage)" >&2
    exit 2
}
[[ $mib =~ ^[0-9]+$ ]] && [ "$mib" -ge 1 ] || {
    echo "output.sh: --mib takes a whole number of MiB, at least 1 ($usage)" >&2
    exit 2
}

say() {
    if [ "$json" = 1 ]; then echo "$*" >&2; else echo "$*"; fi
}
fail() {
    echo "output.sh: FAILED: $*" >&2
    exit 1
}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true

if [ -n "${PLUSH:-}" ]; then
    plush=$PLUSH
else
    echo "output.sh: building the release plush binary" >&2
    cargo build --release -p plush >&2
    plush=${CARGO_TARGET_DIR:-$root/target}/release/plush
fi
[ -x "$plush" ] || fail "$plush is not an executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/plush-output-bench.XXXXXX")
plush_pid=

# Whether process $1 is a client of the plush run $plush_pid (its command line names the run's
# key file).
ours() {
    local cmdline
    cmdline=$({ tr '\0' ' ' < "/proc/$1/cmdline"; } 2> /dev/null) || return 1
    [[ $cmdline == *" client "*"plush-key-$plush_pid-"* ]]
}

# Kill the running plush (if any) and whatever clients of it are left.
stop_run() {
    [ -n "$plush_pid" ] || return 0
    if kill -0 "$plush_pid" 2> /dev/null; then
        kill -TERM "$plush_pid" 2> /dev/null || true
        for _ in $(seq 50); do
            kill -0 "$plush_pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$plush_pid" 2> /dev/null || true
    fi
    wait "$plush_pid" 2> /dev/null || true
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        if ours "$p"; then kill -KILL "$p" 2> /dev/null || true; fi
    done
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

bytes=$((mib << 20))
lines_per_host=$((bytes / 64))
[ $((lines_per_host * 64)) = "$bytes" ] || fail "bytes per host must be a multiple of 64"
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2> /dev/null || true; }
now_ns() { date +%s%N; }

say "output.sh: $hosts local hosts, $mib MiB each, plush $plush"

# 1. Streamed, distinct per host.
mkfifo "$work/pipe"
{
    IFS= read -r first || exit 0
    now_ns > "$work/t_first"
    printf '%s\n' "$first"
    exec cat
} < "$work/pipe" > "$work/stream.out" &
sink=$!
# Each host: its address, padded to 63 bytes, as lines of 64 bytes.
cmd="yes \"\$(printf '%-63s' \"\$PLUSH_NODE\")\" | head -c $bytes"
"$plush" run --local "$hosts" --stream -- sh -c "$cmd" > "$work/pipe" 2> "$work/stream.err" &
plush_pid=$!
ctl_rss=0
cl_rss=0
while kill -0 "$plush_pid" 2> /dev/null; do
    if [ -s "$work/t_first" ]; then
        r=$(rss "$plush_pid")
        [ -n "$r" ] && [ "$r" -gt "$ctl_rss" ] && ctl_rss=$r
        for d in /proc/[0-9]*; do
            p=${d#/proc/}
            if ours "$p"; then
                r=$(rss "$p")
                [ -n "$r" ] && [ "$r" -gt "$cl_rss" ] && cl_rss=$r
            fi
        done
    fi
    sleep 0.2
done
rc=0
wait "$plush_pid" || rc=$?
t_end=$(now_ns)
plush_pid=
wait "$sink" || true
[ "$rc" = 0 ] || { tail -n 20 "$work/stream.err" >&2; fail "plush run --stream exited $rc"; }
[ -s "$work/t_first" ] || fail "no output at all"
t_first=$(cat "$work/t_first")
stream_s=$(awk -v a="$t_first" -v b="$t_end" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
# Off the clock: every line is its host's, and each host's lines are all there.
got_lines=$(LC_ALL=C awk -F': ' '
    { split($2, a, ":"); if (a[1] != $1 || length($2) != 63) bad++; else n[$1]++ }
    END { if (bad) { print "bad " bad; exit } for (h in n) t += n[h]; print t }' "$work/stream.out")
case "$got_lines" in
    bad*) fail "stream: lines not of their host: $got_lines" ;;
esac
lost=$(((hosts * lines_per_host - got_lines) * 64))
mibs=$(awk -v h="$hosts" -v m="$mib" -v s="$stream_s" 'BEGIN { printf "%.1f", h * m / s }')
say "output.sh: stream: $((hosts * mib)) MiB in $stream_s s ($mibs MiB/s), lost $lost bytes; RSS controller $ctl_rss KiB, client $cl_rss KiB"
rm -f "$work/stream.out"

# 2. Grouped, the same output everywhere.
"$plush" run --local "$hosts" --json -- sh -c "yes plush | head -c $bytes" > "$work/same.out" 2> "$work/same.err" &
plush_pid=$!
rc=0
wait "$plush_pid" || rc=$?
plush_pid=
summary=$(tail -n 1 "$work/same.out")
[ "$rc" = 0 ] || { tail -n 20 "$work/same.err" >&2; fail "plush run (identical) exited $rc: $summary"; }
ident=$(sed -n 's/.*"output_bytes":\([0-9][0-9]*\).*/\1/p' <<< "$summary")
[ -n "$ident" ] || fail "no output_bytes in $summary"
count=$(head -n 1 "$work/same.out" | sed -n 's/.*"count":\([0-9][0-9]*\).*/\1/p')
[ "$count" = "$hosts" ] || fail "identical outputs in one group of $hosts, got ${count:-none}"
say "output.sh: identical: the controller received $ident output bytes ($(awk -v a="$ident" -v b="$bytes" 'BEGIN { printf "%.3f", a / b }') x one output)"

# 2b. Grouped, distinct per host: the grouped printout is checked as it is read (a group's
# header names its hosts; with distinct outputs, one host each: every body line is that host's
# padded address).
mkfifo "$work/dpipe"
LC_ALL=C awk '
    /^-+$/ { rule++; next }
    rule % 2 == 1 { host = $1; next }
    { split($0, b, ":"); if (b[1] != host || length($0) != 63) bad++; else n++ }
    END { if (bad) print "bad " bad; else print n + 0 }' < "$work/dpipe" > "$work/distinct.count" &
checker=$!
t0=$(now_ns)
"$plush" run --local "$hosts" -- sh -c "$cmd" > "$work/dpipe" 2> "$work/distinct.err" &
plush_pid=$!
d_ctl_rss=0
d_cl_rss=0
while kill -0 "$plush_pid" 2> /dev/null; do
    r=$(rss "$plush_pid")
    [ -n "$r" ] && [ "$r" -gt "$d_ctl_rss" ] && d_ctl_rss=$r
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        if ours "$p"; then
            r=$(rss "$p")
            [ -n "$r" ] && [ "$r" -gt "$d_cl_rss" ] && d_cl_rss=$r
        fi
    done
    sleep 0.2
done
rc=0
wait "$plush_pid" || rc=$?
plush_pid=
wait "$checker" || true
t1=$(now_ns)
[ "$rc" = 0 ] || { tail -n 20 "$work/distinct.err" >&2; fail "plush run (distinct, grouped) exited $rc"; }
d_lines=$(cat "$work/distinct.count")
case "$d_lines" in
    "" | bad*) tail -n 20 "$work/distinct.err" >&2; fail "grouped distinct: lines not of their host: ${d_lines:-none}" ;;
esac
d_lost=$(((hosts * lines_per_host - d_lines) * 64))
d_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
say "output.sh: grouped distinct: $((hosts * mib)) MiB printed in $d_s s, lost $d_lost bytes; RSS controller $d_ctl_rss KiB, client $d_cl_rss KiB"

# 3. pdsh, the same streamed output, each host's command run locally.
pdsh_mibs=null
pdsh_lost=null
if command -v pdsh > /dev/null; then
    pcmd="yes \"\$(printf '%-63s' %h)\" | head -c $bytes"
    t0=$(now_ns)
    plines=$(pdsh -R exec -f "$hosts" -w "127.0.0.[1-$hosts]" sh -c "$pcmd" 2> "$work/pdsh.err" | wc -l)
    t1=$(now_ns)
    pdsh_lost=$(((hosts * lines_per_host - plines) * 64))
    pdsh_mibs=$(awk -v h="$hosts" -v m="$mib" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", h * m / ((b - a) / 1e9) }')
    say "output.sh: pdsh -R exec: $((hosts * mib)) MiB at $pdsh_mibs MiB/s, lost $pdsh_lost bytes"
fi

printf '{"hosts":%d,"bytes_per_host":%d,"stream_s":%s,"stream_mib_per_s":%s,"stream_lost_bytes":%d,"identical_controller_bytes":%d,"controller_rss_kib":%d,"client_rss_kib":%d,"distinct_s":%s,"distinct_lost_bytes":%d,"distinct_controller_rss_kib":%d,"distinct_client_rss_kib":%d,"pdsh_exec_mib_per_s":%s,"pdsh_exec_lost_bytes":%s}\n' \
    "$hosts" "$bytes" "$stream_s" "$mibs" "$lost" "$ident" "$ctl_rss" "$cl_rss" "$d_s" "$d_lost" "$d_ctl_rss" "$d_cl_rss" "$pdsh_mibs" "$pdsh_lost"
