#!/usr/bin/env bash
# dist.sh [--out DIR] [--profile NAME] [--json]: the static client builds of plush.
#
# Builds `plush` for x86_64-unknown-linux-musl and aarch64-unknown-linux-musl with the `dist`
# profile (stripped, fat LTO; see Cargo.toml) and puts them in a directory of builds named as
# `uname -m` names the architectures, the layout `plush run --client-binaries DIR` reads:
#
#   DIR/x86_64/plush
#   DIR/aarch64/plush
#
# DIR is `dist` at the top of the repository unless --out says otherwise. The aarch64 build is
# cross-linked by Debian's packaged cross toolchain (apt-get install gcc-aarch64-linux-gnu: the
# linker is set in .cargo/config.toml, the C compiler of `ring` here) and checked under
# qemu-user (apt-get install qemu-user). Both Rust targets install with `rustup target add`.
# .ci/run installs all of it.
#
# Each build is checked: it is a static executable (no program interpreter, no shared
# library), it prints `plush <version>` for --version, and it runs a 200-node simulation to
# convergence. Then a local cluster is made of the two: this machine's build is the controller
# and starts 3 clients of each build (the other architecture's under qemu) with
# `--launcher command`, and every one of them must run a job.
#
# Stdout: sizes and checks, then, as its last line, one JSON object: `x86_64_bytes`,
# `aarch64_bytes`, `profile`, `out`. Exit status 0 when both builds were made and passed every
# check, 1 otherwise, 2 for a usage error. Cargo's progress goes to stderr. The target
# directory is CARGO_TARGET_DIR when set, else cargo's own.

set -euo pipefail

out=
profile=dist
json=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out)
            out=${2:?--out needs a directory}
            shift 2
            ;;
        --profile)
            profile=${2:?--profile needs a name}
            shift 2
            ;;
        --json)
            json=1
            shift
            ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "dist.sh: unknown argument $1 (usage: dist.sh [--out DIR] [--profile NAME] [--json])" >&2
            exit 2
            ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${out:-$root/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

say() { [ "$json" = 1 ] || echo "$@"; }

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-${CARGO_TARGET_DIR:-$root/target}}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# arch (as uname -m names it) -> Rust target
declare -A triple=([x86_64]=x86_64-unknown-linux-musl [aarch64]=aarch64-unknown-linux-musl)
# How to run a build of each architecture on this machine: natively, or under qemu-user.
here=$(uname -m)
runner() {
    if [ "$1" = "$here" ]; then
        echo ""
    else
        echo "qemu-$1"
    fi
}

for arch in x86_64 aarch64; do
    t=${triple[$arch]}
    echo "dist.sh: building plush for $t (profile $profile)" >&2
    # ring's C and assembly are compiled by the cross compiler for aarch64; musl-gcc (or the
    # system cc) for x86_64.
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
        cargo build --profile "$profile" -p plush --target "$t" >&2
    mkdir -p "$out/$arch"
    cp -f "$target_dir/$t/$profile/plush" "$out/$arch/plush.tmp"
    mv -f "$out/$arch/plush.tmp" "$out/$arch/plush"
done

failed=0
fail() {
    echo "dist.sh: $*" >&2
    failed=1
}

for arch in x86_64 aarch64; do
    bin=$out/$arch/plush
    run=$(runner "$arch")
    if [ -n "$run" ] && ! command -v "$run" > /dev/null; then
        fail "$run is missing: apt-get install qemu-user"
        continue
    fi
    # Static: no program interpreter and no shared library (readelf from binutils).
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
        fail "$bin asks for a program interpreter: not static"
    fi
    if readelf -dW "$bin" 2> /dev/null | grep -q '(NEEDED)'; then
        fail "$bin needs shared libraries: not static"
    fi
    machine=$(readelf -hW "$bin" | sed -n 's/^ *Machine: *//p')
    got=$($run "$bin" --version 2>&1) || true
    if [ "$got" != "plush $version" ]; then
        fail "$bin --version said \"$got\", not \"plush $version\""
    fi
    sim=$($run "$bin" sim --nodes 200 --seed 7 --json 2>&1) || true
    if ! grep -q '"converged":true' <<< "$sim"; then
        fail "$bin sim --nodes 200 did not converge: ${sim:0:300}"
    fi
    say "$arch: $bin, $(stat -c %s "$bin") bytes, $machine, ${run:-native}: $got, a 200-node simulation converged"
done

# The two builds in one cluster: this machine's is the controller and starts 6 clients on
# loopback addresses, those on .1, .3 and .5 of the other architecture (under qemu-user). The
# job prints each client's command line (its parent's): one line per host.
if [ "$failed" = 0 ]; then
    ctl=$out/$here/plush
    other=aarch64
    [ "$here" = aarch64 ] && other=x86_64
    emu=$(runner "$other")
    template="case {ip} in *.1|*.3|*.5) exec $emu $out/$other/plush client --listen {addr} --key-file - ;; \
*) exec $ctl client --listen {addr} --key-file - ;; esac"
    job=$("$ctl" run --local 6 --launcher command --launcher-command "$template" --json -- \
        sh -c 'tr "\0" " " < /proc/$PPID/cmdline' 2>&1) || true
    emulated=$(grep -c "\"stdout\":\"$emu $out/$other/plush client" <<< "$job" || true)
    if grep -q '"ok":6' <<< "$job" && [ "$emulated" = 3 ]; then
        say "a local cluster of both builds: 3 $here clients and 3 $other clients ($emu) ran a job"
    else
        fail "the cluster of both builds did not run a job on 3 clients of each: ${job:0:1000}"
    fi
fi

printf '{"x86_64_bytes":%s,"aarch64_bytes":%s,"profile":"%s","out":"%s"}\n' \
    "$(stat -c %s "$out/x86_64/plush" 2> /dev/null || echo null)" \
    "$(stat -c %s "$out/aarch64/plush" 2> /dev/null || echo null)" "$profile" "$out"
exit "$failed"
