#!/usr/bin/env bash
# footprint.sh [--json]: what a local Plush cluster costs.
#
# Builds the release `plush` binary and the `footprint` example of plush-mio, then runs the
# example, which starts local clusters of the real `plush client` processes (10, then 1000, on
# loopback addresses) and measures (see driver-mio/examples/footprint.rs):
#   client_rss_kib        VmRSS of an idle client with 12 children (the root of the 1000-client
#                         tree), after `hostname` ran everywhere and a few seconds of idling
#   client_fds            that client's open fds
#   binary_bytes          size of target/release/plush
#   controller_fds_10     fds open in the controller once 10 clients are joined
#   controller_fds_1000   the same with 1000 clients
#   launch_join_1000_ms   Cluster::start to all 1000 clients joined
#   hostname_1000_ms      run(["hostname"]) until all 1000 results are back
#   static_binary_bytes   size of the static x86_64 musl `dist` build of plush (benches/dist.sh's,
#                         what the ssh launcher copies to hosts)
#   static_client_rss_kib client_rss_kib again, with 1000 clients of that static build
#
# The static figures need the musl target (rustup target add x86_64-unknown-linux-musl; .ci/run
# adds it): without it they are null.
#
# Stdout: a table and details (none with --json), then, always as its last line, one JSON object
# with those keys (null for what could not be measured). Cargo's and the example's progress go
# to stderr. Exit status: the example's (0 when everything was measured and every client was
# gone after dismantling), 2 for a usage error.
#
# The target directory is CARGO_TARGET_DIR when set, else cargo's own (from `cargo metadata`).
# The example runs with only fds 0-2 open (whatever else the caller left open would be counted in
# the controller and inherited by every client). Every process started is cleaned up on exit, on
# an error and on INT/TERM: the example is killed by its pid if still running, then every client
# it launched (pids from its pid file, and any process whose command line names its key file,
# each checked by /proc/PID/cmdline before being killed by pid), and leftover key files removed.

set -euo pipefail

json=0
for arg in "$@"; do
    case "$arg" in
        --json) json=1 ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "footprint.sh: unknown argument $arg (usage: footprint.sh [--json])" >&2
            exit 2
            ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "footprint.sh: building the release plush binary and the footprint example" >&2
cargo build --release -p plush >&2
cargo build --release -p plush-mio --example footprint >&2
static_args=()
echo "footprint.sh: building the static client (x86_64 musl, profile dist)" >&2
if cargo build --profile dist -p plush --target x86_64-unknown-linux-musl >&2; then
    static_built=1
else
    static_built=0
    echo "footprint.sh: no static build (is the x86_64-unknown-linux-musl target installed?)" >&2
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
    target_dir=${CARGO_TARGET_DIR:-$root/target}
fi
plush=$target_dir/release/plush
example=$target_dir/release/examples/footprint
for f in "$plush" "$example"; do
    if [ ! -x "$f" ]; then
        echo "footprint.sh: $f was not built" >&2
        exit 1
    fi
done

stripped_args=()
static_plush=$target_dir/x86_64-unknown-linux-musl/dist/plush
if [ "$static_built" = 1 ] && [ -x "$static_plush" ]; then
    static_args=(--static-plush "$static_plush")
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/plush-footprint.XXXXXX")
if command -v strip > /dev/null && strip -o "$work/plush.stripped" "$plush" 2> /dev/null; then
    stripped_args=(--stripped-bytes "$(stat -c %s "$work/plush.stripped")")
    rm -f "$work/plush.stripped"
fi
pid_file=$work/pids
: > "$pid_file"
example_pid=
example_reaped=0

# Whether process $1 is one of the clients the example launched: its command line names the
# example's key file (plush-key-<example pid>-...).
ours() {
    local cmdline
    cmdline=$({ tr '\0' ' ' < "/proc/$1/cmdline"; } 2> /dev/null) || return 1
    [[ $cmdline == *" client "*"plush-key-$example_pid-"* ]]
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +eu
    if [ -n "$example_pid" ]; then
        if [ "$example_reaped" = 0 ] && kill -0 "$example_pid" 2> /dev/null; then
            echo "footprint.sh: stopping the example (pid $example_pid)" >&2
            kill -TERM "$example_pid" 2> /dev/null || true
            for _ in $(seq 50); do
                kill -0 "$example_pid" 2> /dev/null || break
                sleep 0.1
            done
            kill -KILL "$example_pid" 2> /dev/null || true
            wait "$example_pid" 2> /dev/null || true
        fi
        # Clients left behind: those the pid file names and any naming the example's key file.
        local pids=() p
        while read -r p; do
            [[ $p =~ ^[0-9]+$ ]] && pids+=("$p")
        done < "$pid_file"
        for d in /proc/[0-9]*; do
            p=${d#/proc/}
            ours "$p" && pids+=("$p")
        done
        local left=()
        for p in $(printf '%s\n' "${pids[@]}" | sort -un); do
            ours "$p" && left+=("$p")
        done
        if [ ${#left[@]} -gt 0 ]; then
            echo "footprint.sh: killing ${#left[@]} client(s) left running (pids ${left[*]:0:10} ...)" >&2
            for p in "${left[@]}"; do kill -TERM "$p" 2> /dev/null || true; done
            sleep 1
            for p in "${left[@]}"; do ours "$p" && kill -KILL "$p" 2> /dev/null || true; done
            sleep 0.2
            for p in "${left[@]}"; do
                if ours "$p"; then
                    echo "footprint.sh: client $p is still running" >&2
                    rc=1
                fi
            done
        fi
        rm -f "${TMPDIR:-/tmp}/plush-key-$example_pid-"*
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=(--plush "$plush" --pid-file "$pid_file" "${stripped_args[@]}" "${static_args[@]}")
[ "$json" = 1 ] && args+=(--json)

# Started in a subshell that closes every fd above 2 first, then becomes the example.
(
    for f in /proc/self/fd/*; do
        n=${f##*/}
        if [ "$n" -gt 2 ]; then eval "exec $n>&-" 2> /dev/null || true; fi
    done
    exec "$example" "${args[@]}"
) &
example_pid=$!
rc=0
wait "$example_pid" || rc=$?
# Reaped: its pid may be reused from now on, so the cleanup must not signal it.
example_reaped=1
exit "$rc"
