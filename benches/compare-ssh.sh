#!/usr/bin/env bash
# `hostname` on N hosts over ssh: pdsh, clush and plush side by side, in one run. See
# benches/README.md.
#
#   benches/compare-ssh.sh [--hosts N] [--json]
#
#   pdsh_s            wall clock of `pdsh -R ssh -l USER -w HOSTS hostname` (default fanout, 32)
#   clush_s           wall clock of `clush -b -w HOSTS hostname` (default fanout, 64)
#   plush_cold_ssh_s  wall clock of `plush run -w HOSTS --launcher ssh -- hostname`: clients
#                     launched over ssh (the binary is already in the account's home: an untimed
#                     run on one host copies it first), join, run, dismantle
#   plush_cold_tree_s the same with `--launch-from tree`: the controller launches the first
#                     host, members launch the others over ssh from their own hosts (with a key
#                     of the account's own, as host-based authentication would give them)
#   plush_cold_ssh_launch_bytes, plush_cold_tree_launch_bytes
#                     bytes the controller's ssh processes sent to sshd in those two runs, IP
#                     packets with their headers (an nftables counter on root's sockets to the
#                     sshd port: every launch's login, and any copy of the binary; members log in
#                     as the bench account and are not counted). Counted in the kernel, so plush's
#                     runs pay nothing pdsh does not (an ssh wrapper that logged the byte counts
#                     cost them a shell and verbose logging a login)
#   plush_warm_s      `run_ms` of the second `run --json hostname` in one `plush shell` session
#                     (null when this plush has no `shell` subcommand)
#   plush_local_s     wall clock of `plush run --local N -- hostname` (no ssh), for reference
#
# The N hosts are the names 127.1.0.1, 127.1.0.2, ... (250 per /24): distinct loopback
# addresses, on which the plush clients listen. Every ssh connection goes to one sshd that the
# script starts on a free port of 127.0.0.1, with its own host key, `UsePAM no`,
# `MaxStartups 1000:30:2000`, `MaxSessions 1000`, logging in the account plush-bench (/bin/sh;
# created if missing) with a generated key. All three tools use the same ssh_config (-F), which
# sends every `Host 127.*` there. Installs pdsh, clustershell, openssh-server and jq with apt-get
# when missing. Each tool must print N `hostname` lines (counted): one that does not is named on
# stderr with its errors, its figure is null, and the script exits 1 after the JSON line.
#
# --hosts N  number of hosts, 1 to 64000 (default 100)
# --json     only the JSON line on stdout (progress goes to stderr)
# PLUSH_FLAGS='...' in the environment adds flags to plush's ssh runs (e.g. '--fanout 128').
#
# The last line on stdout is always one JSON object with the figures (seconds). Builds plush with
# `cargo build --release` into $CARGO_TARGET_DIR if set, else target/; PLUSH=/path/to/plush
# skips the build. Everything started (sshd, the tools, the account's processes) is stopped on
# exit, also on failure or Ctrl-C.
set -euo pipefail
export LC_ALL=C

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

n=100
json=0
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts)
            [ $# -ge 2 ] || { echo "compare-ssh.sh: --hosts needs a number" >&2; exit 2; }
            n=$2
            shift
            ;;
        --hosts=*) n=${1#--hosts=} ;;
        --json) json=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "compare-ssh.sh: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 64000 ]; then
    echo "compare-ssh.sh: --hosts must be a number from 1 to 64000, not $n" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "compare-ssh.sh: run as root (it installs packages, creates an account, starts sshd)" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
USER_NAME=plush-bench
SSHD=/usr/sbin/sshd

# Human lines go to fd 3: stdout, or stderr with --json.
if [ "$json" = 1 ]; then exec 3>&2; else exec 3>&1; fi
say() {
    printf '%s\n' "$*" >&3
}
die() {
    printf 'compare-ssh.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# ---- cleanup: everything started is stopped, by process id ----------------------------------
dir=""
sshd_pid=""
cur_pid="" # the process group of the tool running now (setsid)
own_account=0 # 1 once the account is known to run nothing else: its processes are ours
nft_table=0 # 1 once the byte counter's nftables table exists (deleted on exit)
NFT_TABLE=plush_cmpssh

# The pids of the bench account's processes.
account_pids() {
    pgrep -u "$USER_NAME" 2>/dev/null || true
}

cleanup() {
    local status=$? k
    trap - EXIT INT TERM
    if [ -n "$cur_pid" ]; then
        kill -TERM -- "-$cur_pid" 2>/dev/null || true
        for k in $(seq 1 20); do
            kill -0 -- "-$cur_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$cur_pid" 2>/dev/null || true
        wait "$cur_pid" 2>/dev/null || true
    fi
    if [ -n "$sshd_pid" ]; then
        # The listener, then the connections it forked (each in a session of its own).
        local children
        children=$(pgrep -P "$sshd_pid" 2>/dev/null || true)
        kill -TERM "$sshd_pid" 2>/dev/null || true
        # shellcheck disable=SC2086
        [ -z "$children" ] || kill -TERM $children 2>/dev/null || true
        wait "$sshd_pid" 2>/dev/null || true
    fi
    if [ "$own_account" = 1 ]; then
        local pids
        for k in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(account_pids)
            [ -n "$pids" ] || break
            # shellcheck disable=SC2086
            if [ "$k" -lt 4 ]; then kill -TERM $pids 2>/dev/null || true; else kill -KILL $pids 2>/dev/null || true; fi
            sleep 0.3
        done
        pids=$(account_pids)
        [ -z "$pids" ] || echo "compare-ssh.sh: processes of $USER_NAME still running: $pids" >&2
    fi
    [ "$nft_table" = 0 ] || nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    [ -z "$dir" ] || rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "compare-ssh.sh: interrupted" >&2; exit 130' INT
trap 'echo "compare-ssh.sh: terminated" >&2; exit 143' TERM

# ---- packages, account, limits ---------------------------------------------------------------
missing=()
command -v pdsh >/dev/null || missing+=(pdsh)
command -v clush >/dev/null || missing+=(clustershell)
[ -x "$SSHD" ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-server openssh-client)
command -v jq >/dev/null || missing+=(jq)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
    say "== installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! id "$USER_NAME" >/dev/null 2>&1; then
    say "== creating the account $USER_NAME (/bin/sh)"
    useradd --create-home --shell /bin/sh "$USER_NAME"
fi
# Without PAM, sshd refuses an account whose password is locked ("!"); "*" is not locked.
usermod -p '*' "$USER_NAME"
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
[ -d "$home" ] || die "the home of $USER_NAME ($home) does not exist"
# Leftovers of an earlier run would answer in place of fresh clients.
[ -z "$(account_pids)" ] || die "$USER_NAME already has processes running (another run?): $(account_pids | tr '\n' ' ')"
own_account=1

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "== open files limit: $(ulimit -n)"

# ---- plush -------------------------------------------------------------------------------------
if [ -n "${PLUSH:-}" ]; then
    plush=$PLUSH
else
    target="${CARGO_TARGET_DIR:-target}"
    say "== build: cargo build --release -p plush (target dir: $target)"
    cargo build --release --quiet -p plush --bin plush >&2
    plush="$target/release/plush"
fi
[ -x "$plush" ] || die "no plush binary at $plush"
plush=$(realpath "$plush")

# ---- sshd, keys, ssh_config ------------------------------------------------------------------
# A TCP port nothing uses on any address (and not $1).
free_port() {
    local p k
    for k in $(seq 1 500); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        [ "$p" != "${1:-}" ] || continue
        [ -z "$(ss -Htan "( sport = :$p )")" ] && { echo "$p"; return 0; }
    done
    return 1
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/plush-compare-ssh.XXXXXX")
# The account reads authorized_keys from here.
chmod 755 "$dir"
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
cp "$dir/user_key.pub" "$dir/authorized_keys"
chmod 644 "$dir/authorized_keys"
sshd_port=$(free_port) || die "no free port for sshd"
cat >"$dir/sshd_config" <<EOF
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers $USER_NAME
MaxStartups 1000:30:2000
MaxSessions 1000
LogLevel ERROR
EOF
cfg="$dir/ssh_config"
cat >"$cfg" <<EOF
Host 127.*
  HostName 127.0.0.1
  Port $sshd_port
  User $USER_NAME
  IdentityFile $dir/user_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
EOF
# Members log in from their hosts as the account: a key it can read (tree launch).
cp "$dir/user_key" "$dir/member_key"
chown "$USER_NAME" "$dir/member_key"
chmod 600 "$dir/member_key"
sed "s|$dir/user_key|$dir/member_key|" "$cfg" >"$dir/ssh_config_tree"
# The controller's bytes to sshd: a counter on what root's sockets send to the sshd port (the
# controller runs as root, members as the account). launch_bytes prints it and resets it.
nft_table=1
nft -f - <<EOF || die "cannot make the nftables counter (needs nftables and root)"
table inet $NFT_TABLE {
    counter launch { }
    chain out {
        type filter hook output priority 0; policy accept;
        tcp dport $sshd_port meta skuid 0 counter name launch
    }
}
EOF
launch_bytes() {
    nft reset counter inet "$NFT_TABLE" launch | awk '/bytes/ { for (i = 1; i < NF; i++) if ($i == "bytes") print $(i + 1) }'
}
mkdir -p /run/sshd
"$SSHD" -t -f "$dir/sshd_config" || die "sshd refuses its configuration"
"$SSHD" -D -e -f "$dir/sshd_config" </dev/null 2>"$dir/sshd.log" &
sshd_pid=$!
for k in $(seq 1 100); do
    [ -n "$(ss -Htln "( sport = :$sshd_port )")" ] && break
    kill -0 "$sshd_pid" 2>/dev/null || die "sshd exited: $(cat "$dir/sshd.log")"
    sleep 0.1
done
[ -n "$(ss -Htln "( sport = :$sshd_port )")" ] || die "sshd does not listen on port $sshd_port"
say "== sshd (pid $sshd_pid) on 127.0.0.1:$sshd_port, account $USER_NAME, ssh config $cfg"

hn=$(hostname)
out=$(ssh -F "$cfg" 127.1.0.1 hostname </dev/null 2>&1) || die "ssh to 127.1.0.1 failed: $out"
[ "$out" = "$hn" ] || die "ssh 127.1.0.1 hostname printed '$out', not '$hn'"

# ---- hosts ---------------------------------------------------------------------------------------
# 127.1.K.[1-250] for each full /24, then the rest.
hosts=""
left=$n
k=0
while [ "$left" -gt 0 ]; do
    m=$((left < 250 ? left : 250))
    if [ "$m" = 1 ]; then part="127.1.$k.1"; else part="127.1.$k.[1-$m]"; fi
    hosts="${hosts:+$hosts,}$part"
    left=$((left - m))
    k=$((k + 1))
done
say "== $n hosts: $hosts (hostname: $hn)"
limit=$((300 + n)) # seconds any one tool may take

# ---- running and checking the tools -------------------------------------------------------------
failures=() # what went wrong; the figure of a tool that failed is null

# run_tool NAME INPUT CMD...: runs CMD in a process group of its own (so that a Ctrl-C or a
# failure stops it with its ssh children), stdin from INPUT, stdout/stderr to $dir/NAME.out/.err.
# Sets `secs` to the wall clock (3 decimals) and `rc` to the exit status (124: killed after
# $limit seconds).
run_tool() {
    local name=$1 input=$2
    shift 2
    local t0 t1
    t0=$EPOCHREALTIME
    setsid timeout -k 10 "$limit" "$@" <"$input" >"$dir/$name.out" 2>"$dir/$name.err" &
    cur_pid=$!
    rc=0
    wait "$cur_pid" || rc=$?
    t1=$EPOCHREALTIME
    cur_pid=""
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

# ok NAME COUNT: true when COUNT is N; else says so loudly (with the tool's stderr) and records
# the failure.
ok() {
    local name=$1 got=$2
    [ "$got" = "$n" ] && return 0
    local why="$name: $got of $n hosts answered (exit $rc$([ "$rc" != 124 ] || echo ", killed after $limit s"))"
    failures+=("$why")
    {
        echo "compare-ssh.sh: FAILED: $why; its stderr ($(wc -l <"$dir/$name.err") lines):"
        head -n 15 "$dir/$name.err" | sed 's/^/    /'
    } >&2
    return 1
}

# The JSON lines of plush output (`plush shell` also prints plain lines, e.g. `joined 5/5`).
plush_json() {
    grep '^{' "$1" || true
}
# Hostname lines in plush --json output (groups of exit 0 whose output is the hostname).
plush_count() {
    plush_json "$1" | jq -rs --arg out "$hn"$'\n' \
        '[.[] | select(.summary == null and .exit == 0 and .stdout == $out) | .count] | add // 0'
}
plush_summary() {
    plush_json "$1" | jq -r 'select(.summary) | .summary
        | "build \(.build_ms) ms, run \(.run_ms) ms, dismantle \(.dismantle_ms) ms, exit \(.exit)"'
}

# After a plush run over ssh the account must run no client (so that the next run is cold):
# wait at most 10 s, then kill what is left (by pid) and record it.
no_clients_left() {
    local k left
    for k in $(seq 1 100); do
        left=$(pgrep -u "$USER_NAME" -f 'client --listen' || true)
        [ -n "$left" ] || return 0
        sleep 0.1
    done
    left=$(echo $left)
    failures+=("$1: $(wc -w <<<"$left") plush clients of $USER_NAME still running 10 s after it ended")
    echo "compare-ssh.sh: FAILED: ${failures[-1]}; killing them" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
}

# pdsh: its ssh module passes `-l%u`, so the user is given with -l; the config through
# PDSH_SSH_ARGS_APPEND (put before the host name).
say "== pdsh -R ssh -l $USER_NAME -w <$n hosts> hostname (PDSH_SSH_ARGS_APPEND='-F $cfg')"
run_tool pdsh /dev/null env PDSH_SSH_ARGS_APPEND="-F $cfg" pdsh -R ssh -l "$USER_NAME" -w "$hosts" hostname
got=$(awk -v hn="$hn" '{ i = index($0, ": "); if (i && substr($0, i + 2) == hn) c++ } END { print c + 0 }' "$dir/pdsh.out")
if ok pdsh "$got"; then pdsh_s=$secs; else pdsh_s=null; fi
say "   $secs s ($got hosts answered)"

# clush -b: one block per distinct output, headed `nodes (count)`.
say "== clush -b -o '-F $cfg' -w <$n hosts> hostname"
run_tool clush /dev/null clush -b -o "-F $cfg" -w "$hosts" hostname
got=$(awk -v hn="$hn" '
    /^-+$/ { dashes++; next }
    dashes % 2 == 1 { match($0, /\(([0-9]+)\)$/); c = substr($0, RSTART + 1, RLENGTH - 2); next }
    dashes % 2 == 0 && dashes > 0 && $0 == hn { total += c }
    END { print total + 0 }' "$dir/clush.out")
if ok clush "$got"; then clush_s=$secs; else clush_s=null; fi
say "   $secs s ($got hosts answered)"

# plush over ssh. Every host is the same account on this machine: an untimed run on one host
# copies the binary into its home, and the cold run finds it there on every host.
plush_ssh=(--launcher ssh "--ssh-option=-F$cfg")
# PLUSH_FLAGS: more flags for plush's ssh runs (e.g. PLUSH_FLAGS='--fanout 128').
read -r -a plush_extra <<<"${PLUSH_FLAGS:-}"
plush_ssh+=("${plush_extra[@]}")
port=$(free_port "$sshd_port") || die "no free port for the plush clients"
say "== plush run --json -w 127.1.0.1 --launcher ssh --ssh-option=-F$cfg --port $port -- hostname (untimed: copies the binary)"
run_tool plush-first /dev/null "$plush" run --json -w 127.1.0.1 "${plush_ssh[@]}" --port "$port" -- hostname
n_all=$n
n=1
ok plush-first "$(plush_count "$dir/plush-first.out")" || true
n=$n_all
say "   $secs s; $(plush_summary "$dir/plush-first.out")"
no_clients_left plush-first

port=$(free_port "$sshd_port") || die "no free port for the plush clients"
say "== plush run --json -w <$n hosts> --launcher ssh --ssh-option=-F$cfg --port $port -- hostname (cold: launch, join, run, dismantle)"
launch_bytes >/dev/null
run_tool plush-cold /dev/null "$plush" run --json -w "$hosts" "${plush_ssh[@]}" --port "$port" -- hostname
got=$(plush_count "$dir/plush-cold.out")
if ok plush-cold "$got"; then plush_cold_ssh_s=$secs; else plush_cold_ssh_s=null; fi
no_clients_left plush-cold
plush_cold_ssh_launch_bytes=$(launch_bytes)
say "   $secs s ($got hosts answered); $(plush_summary "$dir/plush-cold.out"); the controller's ssh sent $plush_cold_ssh_launch_bytes bytes"

# The same, launched by the tree: members ssh from their hosts with the account's own key.
plush_tree=(--launcher ssh "--ssh-option=-F$dir/ssh_config_tree" --launch-from tree "${plush_extra[@]}")
port=$(free_port "$sshd_port") || die "no free port for the plush clients"
say "== plush run --json -w <$n hosts> --launcher ssh --ssh-option=-F$dir/ssh_config_tree --launch-from tree --port $port -- hostname (cold, tree launch)"
launch_bytes >/dev/null
run_tool plush-tree /dev/null "$plush" run --json -w "$hosts" "${plush_tree[@]}" --port "$port" -- hostname
got=$(plush_count "$dir/plush-tree.out")
if ok plush-tree "$got"; then plush_cold_tree_s=$secs; else plush_cold_tree_s=null; fi
no_clients_left plush-tree
plush_cold_tree_launch_bytes=$(launch_bytes)
say "   $secs s ($got hosts answered); $(plush_summary "$dir/plush-tree.out"); the controller's ssh sent $plush_cold_tree_launch_bytes bytes"

# plush shell: two runs in one session; warm = run_ms of the second.
plush_warm_s=null
if "$plush" shell --help >/dev/null 2>&1; then
    port=$(free_port "$sshd_port") || die "no free port for the plush clients"
    printf 'run --json hostname\nrun --json hostname\n' >"$dir/shell.in"
    say "== printf 'run --json hostname\\n' x2 | plush shell -w <$n hosts> --launcher ssh --ssh-option=-F$cfg --port $port"
    run_tool plush-shell "$dir/shell.in" "$plush" shell -w "$hosts" "${plush_ssh[@]}" --port "$port"
    # The second run: the lines after the first summary, up to the second.
    awk '/"summary"/ { s++; if (s == 2) { print; exit } next } s == 1' "$dir/plush-shell.out" >"$dir/plush-warm.out"
    got=$(plush_count "$dir/plush-warm.out")
    run_ms=$(plush_json "$dir/plush-warm.out" | jq -r 'select(.summary) | .summary.run_ms')
    if ok plush-shell "$got"; then
        if [[ "$run_ms" =~ ^[0-9]+$ ]]; then
            plush_warm_s=$(awk -v ms="$run_ms" 'BEGIN { printf "%.3f", ms / 1000 }')
        else
            failures+=("plush shell: no run_ms in the second summary")
            echo "compare-ssh.sh: FAILED: ${failures[-1]}" >&2
        fi
    fi
    say "   second run: run_ms ${run_ms:-none} ($got hosts answered); whole session $secs s"
    no_clients_left plush-shell
else
    echo "compare-ssh.sh: $plush has no \`shell\` subcommand: plush_warm_s is null" >&2
fi

say "== plush run --json --local $n -- hostname"
run_tool plush-local /dev/null "$plush" run --json --local "$n" -- hostname
got=$(plush_count "$dir/plush-local.out")
if ok plush-local "$got"; then plush_local_s=$secs; else plush_local_s=null; fi
say "   $secs s ($got hosts answered); $(plush_summary "$dir/plush-local.out")"

if [ ${#failures[@]} -gt 0 ]; then
    echo "compare-ssh.sh: FAILED (${#failures[@]}): the figures of these are null:" >&2
    printf '    %s\n' "${failures[@]}" >&2
fi
printf '{"hosts": %d, "pdsh_s": %s, "clush_s": %s, "plush_cold_ssh_s": %s, "plush_cold_tree_s": %s, "plush_cold_ssh_launch_bytes": %s, "plush_cold_tree_launch_bytes": %s, "plush_warm_s": %s, "plush_local_s": %s}\n' \
    "$n" "$pdsh_s" "$clush_s" "$plush_cold_ssh_s" "$plush_cold_tree_s" "$plush_cold_ssh_launch_bytes" "$plush_cold_tree_launch_bytes" "$plush_warm_s" "$plush_local_s"
[ ${#failures[@]} -eq 0 ] || exit 1
