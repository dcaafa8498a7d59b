#!/usr/bin/env bash
# Load harness: direct-to-upstream vs nginx vs sidekey, on 127.0.0.1 only.
#
#   benches/load/run.sh                 # full run (3 rounds of 5 s per point)
#   BENCH_QUICK=1 benches/load/run.sh   # ~3 s smoke run
#
# See benches/load/README.md for what is measured and how to read it.
#
# Environment knobs (all optional):
#   DURATION=5s WARMUP=2s      wrk measured / warm-up time per point and round
#   ROUNDS=3                   rounds; layouts take turns within each round and
#                              every figure is the median over the rounds
#   CONNS="1 32"               connection counts (wrk -c)
#   WRK_THREADS=1              wrk threads (capped at the connection count);
#                              1 because the load generator gets one core
#   STREAM_BYTES=1073741824    bytes streamed down and up per layout
#   STREAM_REPEAT=3            transfers per direction (median is reported)
#   LAYOUTS="direct nginx floor sidekey sidekey-pgo"
#                              floor = benches/load/floor.rs, a bare hyper
#                              proxy doing nginx's job: what hyper itself costs;
#                              sidekey-pgo = sidekey built by scripts/pgo-build.sh
#   PGO=auto                   auto|0: build sidekey-pgo (two more release
#                              builds, ~10 min); auto drops the layout with a
#                              note when no matching llvm-profdata is found
#   SIDEKEY_PGO_BIN=path       use this PGO binary, skip its build
#   PERF_STAT=auto             auto|0: count instructions per request with
#                              `perf stat` when it works here
#   PERF_EXTRA=                more perf events counted per request, comma-
#                              separated, each reported in a column of its own
#                              (e.g. cycles:u,L1-icache-load-misses:u; perf
#                              prints some names without the :u, which is
#                              matched too)
#   CPU_LOADGEN=1 CPU_PROXY=0 CPU_UPSTREAM=0   taskset CPU lists (see below)
#   OUT=/tmp/sidekey-load-results.md           markdown results file
#   UPSTREAM_BIN=path          use this upstream binary, skip building it
#   SIDEKEY_BIN=path           default target/release/sidekey
#   SIDEKEY_RUST_LOG=warn      RUST_LOG for sidekey (keep per-request logs off,
#                              nginx runs with access_log off)
#   SKIP_BUILD=1               do not run cargo
#   NGINX_PROXY_BUFFER=64k     nginx proxy_buffer_size/client_body_buffer_size
#                              (nginx.conf.tmpl explains; "4k" = nginx default)
#   SKIP_STREAM=1              skip the 1 GiB streaming part
#   KEEP_TMP=1                 keep the temp dir (configs, logs)
#
# CPU pinning (2-core machine; defaults, override with the CPU_* vars):
#   core 1: the load generator (wrk, curl, dd). It gets a core of its own so
#           that the measuring tool never competes with the system under test;
#           wrk at 32 connections can saturate a core by itself.
#   core 0: the proxy (nginx: 1 worker; sidekey: SIDEKEY_WORKER_THREADS=1)
#           AND the upstream. The proxy+upstream pair is the system under
#           test. In the direct layout the upstream has core 0 to itself, so
#           "direct" is the baseline and the gap to it is what the hop costs.
#           nginx and sidekey get exactly the same placement and the same
#           one-core budget, so sidekey/nginx ratios are apples to apples.
#   The upstream is cheap (current-thread tokio, fixed 100-byte body) so it
#   takes a small, equal share of core 0 in both proxied layouts.
#
# Safety: every listener and every request uses 127.0.0.1; the EXIT trap kills
# exactly the PIDs this script started; every step is under `timeout`.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

BENCH_QUICK=${BENCH_QUICK:-0}
if [[ "$BENCH_QUICK" == 1 ]]; then
    DURATION=${DURATION:-3s}
    WARMUP=${WARMUP:-1s}
    STREAM_BYTES=${STREAM_BYTES:-268435456}
    STREAM_REPEAT=${STREAM_REPEAT:-1}
    ROUNDS=${ROUNDS:-1}
else
    DURATION=${DURATION:-5s}
    WARMUP=${WARMUP:-2s}
    STREAM_BYTES=${STREAM_BYTES:-1073741824}
    STREAM_REPEAT=${STREAM_REPEAT:-3}
fi
CONNS=${CONNS:-"1 32"}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
LAYOUTS=${LAYOUTS:-"direct nginx floor sidekey sidekey-pgo"}
PGO=${PGO:-auto}
SIDEKEY_PGO_BIN=${SIDEKEY_PGO_BIN:-}
PERF_STAT=${PERF_STAT:-auto}
PERF_EXTRA=${PERF_EXTRA:-}
FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/bench-floor}
CPU_LOADGEN=${CPU_LOADGEN:-1}
CPU_PROXY=${CPU_PROXY:-0}
CPU_UPSTREAM=${CPU_UPSTREAM:-0}
OUT=${OUT:-/tmp/sidekey-load-results.md}
UPSTREAM_BIN=${UPSTREAM_BIN:-}
SIDEKEY_BIN=${SIDEKEY_BIN:-$ROOT/target/release/sidekey}
SIDEKEY_RUST_LOG=${SIDEKEY_RUST_LOG:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}
NGINX_PROXY_BUFFER=${NGINX_PROXY_BUFFER:-64k}
SKIP_STREAM=${SKIP_STREAM:-0}
KEEP_TMP=${KEEP_TMP:-0}

CALLER_KEY=bench-caller-key
UPSTREAM_TOKEN=bench-upstream-token
HOST=127.0.0.1   # the only address this script ever talks to
# shellcheck source=benches/load/sidekey-config.sh
source "$HERE/sidekey-config.sh"

log() { printf '[load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- durations
norm_dur() { [[ "$1" =~ ^[0-9]+$ ]] && echo "${1}s" || echo "$1"; }
dur_secs() { # 10s / 2m / 1h / 10 -> seconds (integer, rounded up)
    awk -v d="$1" 'BEGIN{u=substr(d,length(d)); n=d+0;
        if(u=="m")n*=60; else if(u=="h")n*=3600; printf "%d", (n==int(n))?n:int(n)+1}'
}
DURATION=$(norm_dur "$DURATION"); WARMUP=$(norm_dur "$WARMUP")
DUR_S=$(dur_secs "$DURATION"); WARM_S=$(dur_secs "$WARMUP")

# Number of CPUs in a taskset list such as "0", "0,1" or "0-3".
cpu_count() {
    awk -v l="$1" 'BEGIN{n=split(l,a,","); c=0; for(i=1;i<=n;i++){
        if(split(a[i],r,"-")==2) c+=r[2]-r[1]+1; else c++}; print c}'
}

NPROC=$(nproc)
if (( NPROC < 2 )); then
    log "only $NPROC CPU: pinning everything to CPU 0 (numbers will be noisy)"
    CPU_LOADGEN=0; CPU_PROXY=0; CPU_UPSTREAM=0
fi
PROXY_THREADS=$(cpu_count "$CPU_PROXY")

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sidekey-load.XXXXXX")
PIDS=()

kill_pid() { # kill one PID we started: TERM, wait up to 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill_pid "${PIDS[$i]}"; done
    if [[ "$KEEP_TMP" == 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CPUS CMD... ; sets BG_PID. taskset/env exec, so $! is the
# real server process.
start_bg() {
    local name=$1 cpus=$2; shift 2
    taskset -c "$cpus" "$@" >"$TMP/$name.log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}
stop_bg() { # only ever kills a PID that start_bg recorded
    local pid=$1 p keep=()
    [[ " ${PIDS[*]-} " == *" $pid "* ]] || return 0
    kill_pid "$pid"
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

USED_PORTS=" "
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
pick_port() { # sets PORT to a free random port on 127.0.0.1
    local p i
    for i in $(seq 200); do
        p=$(( (RANDOM * 32768 + RANDOM) % 30000 + 20000 ))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if command -v ss >/dev/null && ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then continue; fi
        port_open "$p" && continue
        USED_PORTS+="$p "; PORT=$p; return 0
    done
    die "no free port found"
}
wait_port() { # wait_port PORT PID TIMEOUT_S
    local port=$1 pid=$2 t=$3 i
    for i in $(seq $((t * 10))); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_open "$port" && return 0
        sleep 0.1
    done
    return 1
}
vm_kib() { # vm_kib PID FIELD -> KiB (VmHWM = peak RSS, VmRSS = current)
    awk -v f="$2:" '$1==f{print $2}' "/proc/$1/status" 2>/dev/null || true
}
reset_hwm() { # Linux >= 4.0: writing 5 to clear_refs resets VmHWM
    echo 5 >"/proc/$1/clear_refs" 2>/dev/null
}
mib() { awk -v k="${1:-}" 'BEGIN{ if(k=="") print "n/a"; else printf "%.1f", k/1024 }'; }

# ---------------------------------------------------------------- tools
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || return 1
    if [[ $APT_UPDATED == 0 ]]; then
        as_root timeout 300 apt-get update -qq >&2 || true; APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >&2
}
ensure_tool() { # ensure_tool CMD PKG...
    local cmd=$1; shift
    command -v "$cmd" >/dev/null && return 0
    local pkg
    for pkg in "$@"; do
        log "installing $pkg (for $cmd)"
        apt_install "$pkg" && command -v "$cmd" >/dev/null && return 0
    done
    return 1
}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ensure_tool wrk wrk || die "wrk missing and could not be installed"
ensure_tool curl curl || die "curl missing"
ensure_tool taskset util-linux || die "taskset missing"
if [[ " $LAYOUTS " == *" nginx "* ]] && ! [[ -x "$NGINX" ]]; then
    ensure_tool nginx nginx-light nginx || [[ -x /usr/sbin/nginx ]] || die "nginx missing and could not be installed"
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi

# ---------------------------------------------------------------- build
SIDEKEY_STATUS=""   # empty = usable, otherwise the reason it is skipped
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "cargo build --release (sidekey)"
    if ! (cd "$ROOT" && timeout 1800 cargo build --release >"$TMP/build-sidekey.log" 2>&1); then
        SIDEKEY_STATUS="cargo build --release failed (see build log)"
        tail -n 15 "$TMP/build-sidekey.log" >&2 || true
    fi
fi

build_upstream_standalone() {
    # Fallback when the example cannot be built (not registered in Cargo.toml
    # yet, or the sidekey crate does not compile): a tiny throw-away project
    # that compiles the same upstream.rs with the crate's Cargo.lock.
    local dir="${TMPDIR:-/tmp}/sidekey-bench-upstream"
    mkdir -p "$dir"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "bench-upstream-standalone"
version = "0.0.0"
edition = "2021"
publish = false

[[bin]]
name = "bench-upstream"
path = "$HERE/upstream.rs"

[dependencies]
bytes = "1"
futures-util = { version = "0.3", default-features = false, features = ["std"] }
http-body-util = "0.1"
hyper = { version = "1", features = ["server", "http1"] }
hyper-util = { version = "0.1", features = ["server", "http1", "tokio"] }
tokio = { version = "1", features = ["full"] }

[profile.release]
lto = "thin"
codegen-units = 4

[workspace]
EOF
    [[ -f "$dir/Cargo.lock" || ! -f "$ROOT/Cargo.lock" ]] || cp "$ROOT/Cargo.lock" "$dir/Cargo.lock"
    (cd "$dir" && CARGO_TARGET_DIR="$dir/target" timeout 1800 cargo build --release >"$TMP/build-upstream-standalone.log" 2>&1) || return 1
    UPSTREAM_BIN="$dir/target/release/bench-upstream"
}

if [[ -z "$UPSTREAM_BIN" ]]; then
    UPSTREAM_BIN="$ROOT/target/release/examples/bench-upstream"
    if [[ "$SKIP_BUILD" != 1 ]]; then
        log "cargo build --release --example bench-upstream"
        if ! (cd "$ROOT" && timeout 1800 cargo build --release --example bench-upstream >"$TMP/build-upstream.log" 2>&1); then
            log "example bench-upstream did not build (is the [[example]] entry in Cargo.toml? does the crate compile?); building standalone copy"
            build_upstream_standalone || { tail -n 20 "$TMP/build-upstream-standalone.log" >&2; die "could not build the upstream"; }
        fi
    fi
fi
[[ -x "$UPSTREAM_BIN" ]] || die "upstream binary not found: $UPSTREAM_BIN (set UPSTREAM_BIN)"

FLOOR_STATUS=""
if [[ " $LAYOUTS " == *" floor "* ]]; then
    if [[ "$SKIP_BUILD" != 1 ]]; then
        log "cargo build --release --example bench-floor"
        (cd "$ROOT" && timeout 1800 cargo build --release --example bench-floor >"$TMP/build-floor.log" 2>&1) \
            || FLOOR_STATUS="cargo build --example bench-floor failed (see build log)"
    fi
    [[ -n "$FLOOR_STATUS" || -x "$FLOOR_BIN" ]] || FLOOR_STATUS="binary not found: $FLOOR_BIN"
fi

PGO_STATUS=""
if [[ " $LAYOUTS " == *" sidekey-pgo "* ]]; then
    if [[ "$PGO" == 0 ]]; then
        PGO_STATUS="PGO=0"
    elif [[ -z "$SIDEKEY_PGO_BIN" ]]; then
        SIDEKEY_PGO_BIN="$ROOT/target/pgo/release/sidekey"
        if [[ "$SKIP_BUILD" != 1 ]]; then
            log "scripts/pgo-build.sh (profile-guided sidekey)"
            timeout -k 30 2400 "$ROOT/scripts/pgo-build.sh" >"$TMP/build-pgo.log" 2>&1 \
                || { PGO_STATUS="scripts/pgo-build.sh failed: $({ grep ERROR "$TMP/build-pgo.log" || true; } | tail -n1) (log: build-pgo.log)"
                     tail -n 5 "$TMP/build-pgo.log" >&2 || true; }
        fi
    fi
    [[ -n "$PGO_STATUS" || -x "$SIDEKEY_PGO_BIN" ]] || PGO_STATUS="binary not found: $SIDEKEY_PGO_BIN"
fi

# perf stat counts instructions, which do not depend on how busy the machine is.
if [[ "$PERF_STAT" == auto ]]; then
    if command -v perf >/dev/null && perf stat -x, -e instructions:u true >/dev/null 2>&1; then
        PERF_STAT=1
    else
        PERF_STAT=0
    fi
fi

if [[ -z "$SIDEKEY_STATUS" ]]; then
    if [[ ! -x "$SIDEKEY_BIN" ]]; then
        SIDEKEY_STATUS="binary not found: $SIDEKEY_BIN"
    elif [[ "$(timeout 10 "$SIDEKEY_BIN" serve --help 2>&1 || true)" != *--admin-listen* ]]; then
        SIDEKEY_STATUS="'sidekey serve --help' does not offer --admin-listen (binary not ready yet)"
    fi
fi

# ---------------------------------------------------------------- layouts
pick_port; UPORT=$PORT

UP_PID=""
start_upstream() {
    start_bg upstream "$CPU_UPSTREAM" "$UPSTREAM_BIN" --listen "$HOST:$UPORT"
    UP_PID=$BG_PID
    wait_port "$UPORT" "$UP_PID" 15 || { cat "$TMP/upstream.log" >&2; die "upstream did not start"; }
    log "upstream pid $UP_PID on $HOST:$UPORT (cpu $CPU_UPSTREAM)"
}
upstream_unauthorized() {
    { timeout 5 curl -s "http://$HOST:$UPORT/__stats" || true; } | sed -n 's/.*"unauthorized":\([0-9]*\).*/\1/p'
}

# Per layout: URL base, headers for a good request, server PIDs.
LAYOUT_BASE=""; LAYOUT_HDRS=(); LAYOUT_PID=""; LAYOUT_RSS_PID=""; LAYOUT_BAD_HDRS=(); NGINX_WORKER=""
CALLER_HDRS=(-H "Authorization: Bearer $CALLER_KEY" -H "Connection-Id: c1" -H "Provider-Config-Key: bench")
BAD_CALLER_HDRS=(-H "Authorization: Bearer wrong-key" -H "Connection-Id: c1" -H "Provider-Config-Key: bench")

setup_direct() {
    LAYOUT_BASE="http://$HOST:$UPORT/api"
    LAYOUT_HDRS=(-H "Authorization: Bearer $UPSTREAM_TOKEN")
    LAYOUT_BAD_HDRS=(-H "Authorization: Bearer wrong-key")
    LAYOUT_PID=""; LAYOUT_RSS_PID=""
}

setup_nginx() {
    local d="$TMP/nginx" user_line="" extra="" eflag=()
    mkdir -p "$d"/{client_body,proxy,fastcgi,uwsgi,scgi}
    [[ $EUID -eq 0 ]] && user_line="user root;"   # worker must reach $TMP
    local v; v=$("$NGINX" -V 2>&1)
    [[ "$v" == *without-http_fastcgi_module* ]] || extra+="    fastcgi_temp_path $d/fastcgi;"$'\n'
    [[ "$v" == *without-http_uwsgi_module* ]] || extra+="    uwsgi_temp_path $d/uwsgi;"$'\n'
    [[ "$v" == *without-http_scgi_module* ]] || extra+="    scgi_temp_path $d/scgi;"$'\n'
    pick_port; local nport=$PORT
    EXTRA="$extra" awk -v tmp="$d" -v lp="$nport" -v up="$UPORT" -v ul="$user_line" -v pb="$NGINX_PROXY_BUFFER" '
        { gsub(/@TMP@/, tmp); gsub(/@LISTEN_PORT@/, lp); gsub(/@UPSTREAM_PORT@/, up);
          gsub(/@USER_LINE@/, ul); gsub(/@PROXY_BUFFER@/, pb);
          if ($0 ~ /@EXTRA_TEMP_PATHS@/) { printf "%s", ENVIRON["EXTRA"]; next } print }' \
        "$HERE/nginx.conf.tmpl" >"$d/nginx.conf"
    # -e (nginx >= 1.19.5) keeps even start-up errors out of /var/log/nginx
    v=$("$NGINX" -h 2>&1 || true)
    [[ "$v" == *" -e "* ]] && eflag=(-e "$d/error.log")
    timeout 10 "$NGINX" -t -p "$d" -c "$d/nginx.conf" "${eflag[@]}" >"$TMP/nginx-t.log" 2>&1 \
        || { cat "$TMP/nginx-t.log" >&2; die "nginx config test failed"; }
    start_bg nginx "$CPU_PROXY" "$NGINX" -p "$d" -c "$d/nginx.conf" "${eflag[@]}"
    LAYOUT_PID=$BG_PID
    wait_port "$nport" "$LAYOUT_PID" 15 || { cat "$TMP/nginx.log" "$d/error.log" >&2 || true; return 1; }
    # RSS is measured on the single worker process (child of the master).
    local i w=""
    for i in $(seq 50); do
        w=$(cat /proc/"$LAYOUT_PID"/task/*/children 2>/dev/null | awk '{print $1}' || true)
        [[ -n "$w" ]] && break; sleep 0.1
    done
    [[ -n "$w" ]] || return 1
    LAYOUT_RSS_PID=$w; NGINX_WORKER=$w
    LAYOUT_BASE="http://$HOST:$nport/proxy"
    LAYOUT_HDRS=("${CALLER_HDRS[@]}"); LAYOUT_BAD_HDRS=("${BAD_CALLER_HDRS[@]}")
    log "nginx master $LAYOUT_PID worker $w on $HOST:$nport (cpu $CPU_PROXY)"
}

setup_floor() {
    pick_port; local fport=$PORT
    start_bg floor "$CPU_PROXY" "$FLOOR_BIN" --listen "$HOST:$fport" --upstream "$HOST:$UPORT"
    LAYOUT_PID=$BG_PID; LAYOUT_RSS_PID=$BG_PID
    wait_port "$fport" "$LAYOUT_PID" 15 || { SETUP_ERR="did not start"; return 1; }
    LAYOUT_BASE="http://$HOST:$fport/proxy"
    LAYOUT_HDRS=("${CALLER_HDRS[@]}"); LAYOUT_BAD_HDRS=("${BAD_CALLER_HDRS[@]}")
    log "floor pid $LAYOUT_PID on $HOST:$fport (cpu $CPU_PROXY)"
}

setup_sidekey() { start_sidekey sidekey "$SIDEKEY_BIN"; }
setup_sidekey-pgo() { start_sidekey sidekey-pgo "$SIDEKEY_PGO_BIN"; }
start_sidekey() { # start_sidekey NAME BINARY
    local name=$1 bin=$2
    local d="$TMP/$name"
    write_sidekey_config "$d" "$UPORT"
    pick_port; local sport=$PORT
    pick_port; local aport=$PORT
    # Same placement as nginx: CPU_PROXY, one tokio worker per pinned CPU.
    start_bg "$name" "$CPU_PROXY" env SIDEKEY_SECRET_KEY="$CALLER_KEY" \
        SIDEKEY_WORKER_THREADS="$PROXY_THREADS" RUST_LOG="$SIDEKEY_RUST_LOG" \
        "$bin" serve --listen "$HOST:$sport" --admin-listen "$HOST:$aport" \
        --providers "$d/providers.yaml" --vault "$d/vault.yaml"
    LAYOUT_PID=$BG_PID; LAYOUT_RSS_PID=$BG_PID
    # Ready when the admin /live answers 200, or failing that the proxy port
    # accepts connections; bounded at 30 s.
    local i ok=0
    for i in $(seq 300); do
        kill -0 "$LAYOUT_PID" 2>/dev/null || break
        if [[ $(timeout 2 curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$aport/live" 2>/dev/null) == 200 ]]; then ok=1; break; fi
        if (( i > 50 )) && port_open "$sport"; then ok=1; break; fi
        sleep 0.1
    done
    if [[ $ok != 1 ]]; then
        tail -n 20 "$TMP/$name.log" >&2 || true
        kill -0 "$LAYOUT_PID" 2>/dev/null && SETUP_ERR="not ready within 30 s" || SETUP_ERR="exited during start-up"
        return 1
    fi
    LAYOUT_BASE="http://$HOST:$sport/proxy"
    LAYOUT_HDRS=("${CALLER_HDRS[@]}"); LAYOUT_BAD_HDRS=("${BAD_CALLER_HDRS[@]}")
    log "$name pid $LAYOUT_PID on $HOST:$sport admin $aport (cpu $CPU_PROXY, $PROXY_THREADS worker thread(s))"
}

# ---------------------------------------------------------------- wrk
declare -A RPS P50 P99 NON2XX SOCKERR REQS STATUS HWM_LOAD RSS_IDLE UP401
declare -A DL_MIBS UL_MIBS DL_HWM UL_HWM STREAM_NOTE

to_us() { # "1.23ms" -> 1230
    awk -v v="$1" 'BEGIN{ n=v+0; u=v; sub(/^[0-9.]+/, "", u);
        m = (u=="us")?1 : (u=="ms")?1000 : (u=="s")?1000000 : (u=="m")?60000000 : 1;
        printf "%.0f", n*m }'
}

# run_wrk LAYOUT CONNS DURATION -> sets W_RPS W_P50 W_P99 W_STATUS W_SOCK W_REQS
run_wrk() {
    local layout=$1 c=$2 dur=$3 secs t out
    secs=$(dur_secs "$dur")
    t=$WRK_THREADS; (( t > c )) && t=$c
    out=$(timeout $((secs + 60)) taskset -c "$CPU_LOADGEN" wrk -t"$t" -c"$c" -d"$dur" \
        --latency -s "$HERE/report.lua" "${LAYOUT_HDRS[@]}" "$LAYOUT_BASE/items" 2>&1) || {
        echo "$out" >&2; return 1; }
    echo "$out" >"$TMP/wrk-$layout-c$c.txt"
    local line; line=$(grep '^WRK_RESULT' <<<"$out" || true)
    if [[ -n "$line" ]]; then
        kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
        W_RPS=$(kv rps); W_P50=$(kv p50_us); W_P99=$(kv p99_us); W_REQS=$(kv requests)
        W_STATUS=$(kv status_errors)
        W_SOCK=$(awk -v a="$(kv connect_errors)" -v b="$(kv read_errors)" -v c="$(kv write_errors)" -v d="$(kv timeouts)" 'BEGIN{print a+b+c+d}')
    else
        # Fallback: parse wrk's human output (units us/ms/s).
        W_RPS=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
        W_P50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
        W_P99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
        W_REQS=$(awk '/requests in/{print $1}' <<<"$out")
        W_STATUS=$(awk '/Non-2xx or 3xx responses:/{print $NF}' <<<"$out"); W_STATUS=${W_STATUS:-0}
        W_SOCK=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10}' <<<"$out"); W_SOCK=${W_SOCK:-0}
    fi
    [[ -n "$W_RPS" && -n "$W_P50" && -n "$W_P99" ]]
}

# ---------------------------------------------------------------- streaming
median() { tr ' ' '\n' | { grep -E '^[0-9.]+$' || true; } | sort -g | awk '{a[NR]=$1} END{ if(NR==0) print ""; else if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# stream_once down|up LAYOUT -> sets SPEED (bytes/s), or returns 1 (reason in SERR)
stream_once() {
    local dir=$1 layout=$2 tmo=$(( STREAM_BYTES / 1048576 / 10 + 120 )) r code size speed
    SERR=""; SPEED=""
    if [[ $dir == down ]]; then
        r=$(timeout "$tmo" taskset -c "$CPU_LOADGEN" curl -sS -o /dev/null \
            -w '%{http_code} %{size_download} %{speed_download}' "${LAYOUT_HDRS[@]}" \
            "$LAYOUT_BASE/stream/$STREAM_BYTES" 2>&1) || r="fail $r"
        read -r code size speed <<<"$r" || true
        [[ "$code" == 200 && "$size" == "$STREAM_BYTES" ]] || { SERR="download: $r"; return 1; }
    else
        # chunked request body (-T -); 'Expect:' so curl does not wait for 100
        rm -f "$TMP/sink-$layout.json"
        r=$(taskset -c "$CPU_LOADGEN" dd if=/dev/zero bs=1M iflag=count_bytes count="$STREAM_BYTES" status=none | timeout "$tmo" \
            taskset -c "$CPU_LOADGEN" curl -sS -X POST -T - -H 'Expect:' -o "$TMP/sink-$layout.json" \
            -w '%{http_code} %{size_upload} %{speed_upload}' "${LAYOUT_HDRS[@]}" \
            "$LAYOUT_BASE/sink" 2>&1) || r="fail $r"
        read -r code size speed <<<"$r" || true
        if [[ "$code" != 200 ]] || ! grep -q "\"bytes\":$STREAM_BYTES}" "$TMP/sink-$layout.json" 2>/dev/null; then
            SERR="upload: $r $(cat "$TMP/sink-$layout.json" 2>/dev/null || true)"; return 1
        fi
    fi
    SPEED=$speed
}

# STREAM_REPEAT transfers per direction; report the median throughput and the
# peak RSS over all of them (VmHWM reset before the first one).
stream_layout() {
    local layout=$1 dir i speeds med
    for dir in down up; do
        [[ -n "$LAYOUT_RSS_PID" ]] && { reset_hwm "$LAYOUT_RSS_PID" || true; }
        speeds=""
        for i in $(seq "$STREAM_REPEAT"); do
            if stream_once "$dir" "$layout"; then speeds+="$SPEED "
            else STREAM_NOTE[$layout]+="$SERR; "; fi
        done
        med=$(median <<<"$speeds")
        [[ -n "$med" ]] && med=$(awk -v s="$med" 'BEGIN{printf "%.0f", s/1048576}') || med="fail"
        if [[ $dir == down ]]; then
            DL_MIBS[$layout]=$med
            [[ -n "$LAYOUT_RSS_PID" ]] && DL_HWM[$layout]=$(vm_kib "$LAYOUT_RSS_PID" VmHWM)
        else
            UL_MIBS[$layout]=$med
            [[ -n "$LAYOUT_RSS_PID" ]] && UL_HWM[$layout]=$(vm_kib "$LAYOUT_RSS_PID" VmHWM)
        fi
        log "$layout stream $dir: $(awk -v s="$speeds" 'BEGIN{n=split(s,a," "); for(i=1;i<=n;i++) printf "%.0f ", a[i]/1048576}')MiB/s -> median $med"
    done
}

# ---------------------------------------------------------------- main loop
# Other work on the machine (a cargo build, say) ruins the numbers: measure
# how busy the CPUs are for 2 s before starting, and say so.
cpu_busy_pct() { # cpu_busy_pct [SECONDS=2]
    local a b
    a=$(head -n1 /proc/stat); sleep "${1:-2}"; b=$(head -n1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{ split(a,x," "); split(b,y," "); t=0;
        for(i=2;i<=9;i++) t+=y[i]-x[i]; idle=(y[5]-x[5])+(y[6]-x[6]);
        if (t<=0) print "?"; else printf "%.0f", 100*(t-idle)/t }'
}
# CPU cost per request of one process over the measured run: user and system
# time from /proc (always), instructions from `perf stat` (when PERF_STAT=1).
declare -A CPU_US INS_U INS_K EXTRA EXTRA_L
PERF_EVENTS="instructions:u,instructions:k${PERF_EXTRA:+,$PERF_EXTRA}"
CPU_T0=""; PERF_PID=""; PERF_OUT="$TMP/perf-stat.csv"
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || true; }
cpu_begin() {
    CPU_T0=$(proc_ticks "$1"); PERF_PID=""
    if [[ "$PERF_STAT" == 1 ]]; then
        rm -f "$PERF_OUT"
        perf stat -x, -e "$PERF_EVENTS" -p "$1" -o "$PERF_OUT" >/dev/null 2>&1 &
        PERF_PID=$!; PIDS+=("$PERF_PID")
    fi
}
cpu_end() { # cpu_end KEY PID REQUESTS
    local key=$1 pid=$2 n=${3:-0} t1 hz
    t1=$(proc_ticks "$pid"); hz=$(getconf CLK_TCK)
    if [[ -n "$CPU_T0" && -n "$t1" && "$n" -gt 0 ]]; then
        CPU_US[$key]=$(awk -v a="$CPU_T0" -v b="$t1" -v hz="$hz" -v n="$n" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
    fi
    if [[ -n "$PERF_PID" ]]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        local keep=() p
        for p in "${PIDS[@]}"; do [[ "$p" == "$PERF_PID" ]] || keep+=("$p"); done
        PIDS=("${keep[@]+"${keep[@]}"}")
        if [[ -s "$PERF_OUT" && "$n" -gt 0 ]]; then
            INS_U[$key]=$(awk -F, -v n="$n" '$3 ~ /instructions:u/ && $1+0 > 0 {printf "%.0f", $1/n}' "$PERF_OUT")
            INS_K[$key]=$(awk -F, -v n="$n" '$3 ~ /instructions:k/ && $1+0 > 0 {printf "%.0f", $1/n}' "$PERF_OUT")
            local ev
            for ev in ${PERF_EXTRA//,/ }; do
                EXTRA[$key/$ev]=$(awk -F, -v n="$n" -v e="$ev" 'BEGIN{b=e; sub(/:.*/, "", b)} ($3 == e || $3 == b) && $1+0 > 0 {printf "%.0f", $1/n}' "$PERF_OUT")
            done
        fi
    fi
}

NOISY=""
BUSY_START=$(cpu_busy_pct 2>/dev/null || echo "?")
[[ "$BUSY_START" =~ ^[0-9]+$ ]] && (( BUSY_START > 10 )) && \
    log "WARNING: CPUs were ${BUSY_START}% busy before starting (other work running?); numbers will be noisy"
start_upstream
RAN=()
# Every layout is started first and stays up, so that the measured points can rotate
# between layouts (round 1: direct nginx floor sidekey; round 2: nginx floor sidekey
# direct; ...). The machine's speed drifts over minutes on a shared host; interleaving
# spreads that drift over all layouts instead of charging it to whichever ran last.
declare -A L_BASE L_PID L_RSS L_WORKER RPS_L P50_L P99_L CPU_L INSU_L INSK_L
use_layout() { # restores LAYOUT_* for layout $1
    LAYOUT_BASE=${L_BASE[$1]}; LAYOUT_PID=${L_PID[$1]}; LAYOUT_RSS_PID=${L_RSS[$1]}
    if [[ $1 == direct ]]; then
        LAYOUT_HDRS=(-H "Authorization: Bearer $UPSTREAM_TOKEN")
    else
        LAYOUT_HDRS=("${CALLER_HDRS[@]}")
    fi
}
for layout in $LAYOUTS; do
    if [[ "$layout" == sidekey && -n "$SIDEKEY_STATUS" ]]; then
        STATUS[$layout]="skipped: $SIDEKEY_STATUS"; log "sidekey ${STATUS[$layout]}"; continue
    fi
    if [[ "$layout" == sidekey-pgo && -n "$PGO_STATUS" ]]; then
        STATUS[$layout]="skipped: $PGO_STATUS"; log "sidekey-pgo ${STATUS[$layout]}"; continue
    fi
    if [[ "$layout" == floor && -n "$FLOOR_STATUS" ]]; then
        STATUS[$layout]="skipped: $FLOOR_STATUS"; log "floor ${STATUS[$layout]}"; continue
    fi
    log "=== layout: $layout"
    SETUP_ERR="did not start"; LAYOUT_PID=""; LAYOUT_RSS_PID=""; NGINX_WORKER=""
    if ! "setup_$layout"; then
        STATUS[$layout]="skipped: $SETUP_ERR (see $layout log)"
        [[ -n "$LAYOUT_PID" ]] && stop_bg "$LAYOUT_PID"
        log "$layout ${STATUS[$layout]}"; continue
    fi
    # Sanity: a good request must get the upstream's 200 (proves the upstream
    # credential was injected); a wrong caller key must be refused.
    code=$(timeout 10 curl -s -o "$TMP/sanity-$layout.json" -w '%{http_code}' "${LAYOUT_HDRS[@]}" "$LAYOUT_BASE/items" || true)
    bad=$(timeout 10 curl -s -o /dev/null -w '%{http_code}' "${LAYOUT_BAD_HDRS[@]}" "$LAYOUT_BASE/items" || true)
    if [[ "$code" != 200 ]] || [[ $(wc -c <"$TMP/sanity-$layout.json") != 100 ]]; then
        STATUS[$layout]="skipped: sanity request got HTTP $code (expected 200 + 100-byte body)"
        log "$layout ${STATUS[$layout]}"; [[ -n "$LAYOUT_PID" ]] && stop_bg "$LAYOUT_PID"; continue
    fi
    STATUS[$layout]="ok"
    [[ "$bad" == 401 ]] || STATUS[$layout]="ok (WARNING: wrong caller key got HTTP $bad, expected 401)"
    [[ -n "$LAYOUT_RSS_PID" ]] && RSS_IDLE[$layout]=$(vm_kib "$LAYOUT_RSS_PID" VmRSS)
    L_BASE[$layout]=$LAYOUT_BASE; L_PID[$layout]=$LAYOUT_PID; L_RSS[$layout]=$LAYOUT_RSS_PID
    L_WORKER[$layout]=$NGINX_WORKER; UP401[$layout]=0
    RAN+=("$layout")
done

for c in $CONNS; do
    for layout in "${RAN[@]}"; do
        use_layout "$layout"
        log "$layout c=$c: warm-up $WARMUP"
        run_wrk "$layout" "$c" "$WARMUP" || log "$layout c=$c warm-up failed"
    done
done
for round in $(seq "$ROUNDS"); do
    n=${#RAN[@]}
    for c in $CONNS; do
        for (( i=0; i<n; i++ )); do
            layout=${RAN[$(( (i + round - 1) % n ))]}
            use_layout "$layout"
            # Nothing of ours runs between points: any CPU use now is someone else's.
            busy=$(cpu_busy_pct 1 2>/dev/null || echo "?")
            if [[ "$busy" =~ ^[0-9]+$ ]] && (( busy > 10 )); then
                log "WARNING: CPUs ${busy}% busy before $layout c=$c (other work running?)"
                NOISY+="$layout/c$c/r$round:${busy}% "
            fi
            log "round $round/$ROUNDS $layout c=$c: measure $DURATION"
            # The server under test: the proxy, or the upstream itself for direct.
            cpu_pid=${LAYOUT_RSS_PID:-$UP_PID}
            u0=$(upstream_unauthorized)
            cpu_begin "$cpu_pid"
            k="$layout:$c"
            if run_wrk "$layout" "$c" "$DURATION"; then
                cpu_end "$k" "$cpu_pid" "$W_REQS"
                RPS_L[$k]+="$W_RPS "; P50_L[$k]+="$W_P50 "; P99_L[$k]+="$W_P99 "
                CPU_L[$k]+="${CPU_US[$k]:-} "; INSU_L[$k]+="${INS_U[$k]:-} "; INSK_L[$k]+="${INS_K[$k]:-} "
                for ev in ${PERF_EXTRA//,/ }; do EXTRA_L[$k/$ev]+="${EXTRA[$k/$ev]:-} "; done
                NON2XX[$k]=$(( ${NON2XX[$k]:-0} + ${W_STATUS:-0} ))
                SOCKERR[$k]=$(( ${SOCKERR[$k]:-0} + ${W_SOCK:-0} ))
                REQS[$k]=$(( ${REQS[$k]:-0} + ${W_REQS:-0} ))
                log "$layout c=$c: rps=$W_RPS p50=${W_P50}us p99=${W_P99}us non2xx=$W_STATUS sockerr=$W_SOCK"
            else
                cpu_end "$k" "$cpu_pid" 0
                log "$layout c=$c: wrk failed"
            fi
            u1=$(upstream_unauthorized)
            UP401[$layout]=$(( ${UP401[$layout]:-0} + ${u1:-0} - ${u0:-0} ))
        done
    done
done
# Each figure is the median of the rounds.
for layout in "${RAN[@]}"; do
    for c in $CONNS; do
        k="$layout:$c"
        RPS[$k]=$(median <<<"${RPS_L[$k]:-}"); P50[$k]=$(median <<<"${P50_L[$k]:-}")
        P99[$k]=$(median <<<"${P99_L[$k]:-}")
        CPU_US[$k]=$(median <<<"${CPU_L[$k]:-}" | awk 'NF{printf "%.1f", $1}')
        INS_U[$k]=$(median <<<"${INSU_L[$k]:-}" | awk 'NF{printf "%.0f", $1}')
        INS_K[$k]=$(median <<<"${INSK_L[$k]:-}" | awk 'NF{printf "%.0f", $1}')
        for ev in ${PERF_EXTRA//,/ }; do
            EXTRA[$k/$ev]=$(median <<<"${EXTRA_L[$k/$ev]:-}" | awk 'NF{printf "%.0f", $1}')
        done
    done
done

for layout in "${RAN[@]}"; do
    use_layout "$layout"
    [[ -n "$LAYOUT_RSS_PID" ]] && HWM_LOAD[$layout]=$(vm_kib "$LAYOUT_RSS_PID" VmHWM)
    [[ "$SKIP_STREAM" == 1 ]] || stream_layout "$layout"
    [[ -n "$LAYOUT_PID" ]] && stop_bg "$LAYOUT_PID"
    # The master stops its worker; make sure (the worker is ours too).
    w=${L_WORKER[$layout]:-}
    if [[ -n "$w" ]] && [[ "$(cat /proc/"$w"/comm 2>/dev/null)" == nginx ]]; then
        kill_pid "$w"
    fi
done

# ---------------------------------------------------------------- report
ms() { awk -v u="${1:-}" 'BEGIN{ if(u=="") print "n/a"; else printf "%.3f", u/1000 }'; }
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN{ if(a==""||b==""||a=="fail"||b=="fail"||b+0==0) print "n/a"; else printf "%.2f", a/b }'; }
diffms() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN{ if(a==""||b=="") print "n/a"; else printf "%+.3f", (a-b)/1000 }'; }

first_line() { "$@" 2>&1 | head -n1 || true; }
MODEL=$(lscpu 2>/dev/null | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2; exit}')
GITREV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "no commit")
[[ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null | head -n1)" ]] && GITREV+=" (dirty)"

{
echo "## Load test results"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: ${MODEL:-unknown}, nproc=$NPROC, kernel $(uname -r)"
echo "- nginx: $(first_line "$NGINX" -v | sed 's/^nginx version: //')"
echo "- wrk: $(first_line wrk -v | awk '{print $1, $2}')"
echo "- curl: $(first_line curl --version | awk '{print $1, $2}')"
echo "- rustc: $(first_line rustc --version)"
echo "- sidekey: git $GITREV"
echo "- ${ROUNDS} rounds of ${DURATION} per point (warm-up ${WARMUP}), layouts interleaved within each round, medians reported; wrk threads ≤ $WRK_THREADS, stream size $STREAM_BYTES bytes"
echo "- CPU busy in the 2 s before the run (other work on the machine): ${BUSY_START}% (should be ≈ 0)"
[[ -n "$NOISY" ]] && echo "- **WARNING: other work was using the CPUs before these points (1 s sample): ${NOISY}— rerun on a quiet machine**"
echo "- pinning: load generator cpu $CPU_LOADGEN; proxy cpu $CPU_PROXY (nginx 1 worker / sidekey $PROXY_THREADS worker thread(s)); upstream cpu $CPU_UPSTREAM (tokio current-thread)"
[[ "$BENCH_QUICK" == 1 ]] && echo "- **BENCH_QUICK=1 smoke run: not for publication**"
echo
echo "### Layouts"
echo
for layout in $LAYOUTS; do
    echo "- $layout: ${STATUS[$layout]:-not run}; upstream 401s caused: ${UP401[$layout]:-n/a}"
done
echo
echo "### Request rate and latency (GET, 100-byte JSON)"
echo
echo "| layout | conns | req/s | p50 ms | p99 ms | non-2xx | socket errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for layout in "${RAN[@]}"; do
    for c in $CONNS; do
        k="$layout:$c"
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$layout" "$c" \
            "$(awk -v r="${RPS[$k]:-}" 'BEGIN{ if(r=="") print "n/a"; else printf "%.0f", r }')" \
            "$(ms "${P50[$k]:-}")" "$(ms "${P99[$k]:-}")" "${NON2XX[$k]:-n/a}" "${SOCKERR[$k]:-n/a}"
    done
done
echo
echo "### Ratios"
echo
echo "Each proxy against nginx and against direct, in the same run."
echo
echo "| proxy | conns | req/s vs nginx | req/s vs direct | p99 vs nginx | p99 vs direct | req/s vs floor |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for layout in nginx floor sidekey sidekey-pgo; do
    [[ " ${RAN[*]} " == *" $layout "* ]] || continue
    for c in $CONNS; do
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$layout" "$c" \
            "$(ratio "${RPS[$layout:$c]:-}" "${RPS[nginx:$c]:-}")" "$(ratio "${RPS[$layout:$c]:-}" "${RPS[direct:$c]:-}")" \
            "$(ratio "${P99[$layout:$c]:-}" "${P99[nginx:$c]:-}")" "$(ratio "${P99[$layout:$c]:-}" "${P99[direct:$c]:-}")" \
            "$(ratio "${RPS[$layout:$c]:-}" "${RPS[floor:$c]:-}")"
    done
done
echo
echo "### CPU per request (the proxy process; for direct, the upstream)"
echo
echo "User + system CPU time from /proc over the measured run, divided by the requests served."
[[ "$PERF_STAT" == 1 ]] && echo "Instructions from \`perf stat -p\` over the same run: they do not depend on how busy the machine is."
echo
hdr="| layout | conns | CPU µs/req | user instr/req | kernel instr/req | user instr vs nginx |"; sep="|---|---:|---:|---:|---:|---:|"
for ev in ${PERF_EXTRA//,/ }; do hdr+=" $ev/req |"; sep+="---:|"; done
echo "$hdr"; echo "$sep"
for layout in "${RAN[@]}"; do
    for c in $CONNS; do
        k="$layout:$c"
        row=$(printf '| %s | %s | %s | %s | %s | %s |' "$layout" "$c" "${CPU_US[$k]:-n/a}" \
            "${INS_U[$k]:-n/a}" "${INS_K[$k]:-n/a}" "$(ratio "${INS_U[$k]:-}" "${INS_U[nginx:$c]:-}")")
        for ev in ${PERF_EXTRA//,/ }; do row+=" ${EXTRA[$k/$ev]:-n/a} |"; done
        echo "$row"
    done
done
c1=$(awk '{print $1}' <<<"$CONNS")
echo
added=""
for layout in nginx floor sidekey sidekey-pgo; do
    [[ " ${RAN[*]} " == *" $layout "* ]] || continue
    added+="${added:+, }$layout $(diffms "${P50[$layout:$c1]:-}" "${P50[direct:$c1]:-}") ms"
done
echo "Added p50 latency at $c1 connection(s), against direct: $added."
if [[ "$SKIP_STREAM" != 1 ]]; then
    echo
    echo "### Streaming ($(awk -v b="$STREAM_BYTES" 'BEGIN{printf "%.0f MiB", b/1048576}') each way, curl, one connection, median of $STREAM_REPEAT)"
    echo
    echo "| layout | down MiB/s | down vs direct | up MiB/s | up vs direct | proxy RSS idle MiB | peak RSS wrk MiB | peak RSS down MiB | peak RSS up MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for layout in "${RAN[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$layout" \
            "${DL_MIBS[$layout]:-n/a}" "$(ratio "${DL_MIBS[$layout]:-}" "${DL_MIBS[direct]:-}")" \
            "${UL_MIBS[$layout]:-n/a}" "$(ratio "${UL_MIBS[$layout]:-}" "${UL_MIBS[direct]:-}")" \
            "$(mib "${RSS_IDLE[$layout]:-}")" "$(mib "${HWM_LOAD[$layout]:-}")" \
            "$(mib "${DL_HWM[$layout]:-}")" "$(mib "${UL_HWM[$layout]:-}")"
    done
    for layout in "${RAN[@]}"; do
        [[ -n "${STREAM_NOTE[$layout]:-}" ]] && echo "- $layout streaming problems: ${STREAM_NOTE[$layout]}"
    done
    echo
    echo "RSS = VmHWM of the proxy process (nginx: its single worker). The peak is reset (clear_refs 5) before each direction, so 'down'/'up' are the peaks of those transfers alone; 'wrk' is the peak since start through the request-rate runs."
fi
} | tee "$OUT"
log "results written to $OUT"
