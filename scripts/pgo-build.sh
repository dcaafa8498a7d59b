#!/usr/bin/env bash
# Profile-guided release build of sidekey, on 127.0.0.1 only.
#
#   scripts/pgo-build.sh            # -> target/pgo/release/sidekey
#
# 1. builds an instrumented sidekey (-Cprofile-generate) and the repo's bench upstream;
# 2. trains it: proxies GETs at 1 and 32 connections, request bodies and a streamed download
#    through the instrumented binary to the bench upstream, with wrk, once on tokio's
#    current-thread runtime and once on the multi-thread one;
# 3. merges the profile with the llvm-profdata that matches rustc's LLVM, and builds again
#    with -Cprofile-use.
#
# Why: with one request in flight, a proxy's cost is dominated by fetching its code into a
# cold instruction cache, not by the instructions it runs. The profile lets LLVM lay out the
# hot path contiguously and move cold code away (BENCHMARKS.md has the measurements).
#
# Needs llvm-profdata of rustc's LLVM major version: $LLVM_PROFDATA, rustup's llvm-tools
# component, or `llvm-profdata-<major>` (installed from Debian's llvm-<major> when missing and
# apt-get is usable). wrk is installed the same way. Every process it starts is stopped on exit.
#
# Environment: LLVM_PROFDATA=path, TRAIN_SECONDS=4 (per workload and runtime), KEEP_TMP=1.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=127.0.0.1
# shellcheck source=benches/load/sidekey-config.sh
source "$ROOT/benches/load/sidekey-config.sh"
TRAIN_SECONDS=${TRAIN_SECONDS:-4}
KEEP_TMP=${KEEP_TMP:-0}
GEN_DIR="$ROOT/target/pgo-gen"
USE_DIR="$ROOT/target/pgo"

log() { printf '[pgo %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sidekey-pgo.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [[ "$KEEP_TMP" == 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
apt_install() {
    command -v apt-get >/dev/null || return 1
    as_root timeout 300 apt-get update -qq >&2 || true
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "$@" >&2
}

# ---------------------------------------------------------------- tools
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n "$LLVM_MAJOR" ]] || die "cannot read rustc's LLVM version from 'rustc -vV'"
profdata_major() { "$1" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -n1; }
find_profdata() {
    local c host
    host=$(rustc -vV | sed -n 's/^host: //p')
    for c in "${LLVM_PROFDATA:-}" \
        "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
        "$(command -v "llvm-profdata-$LLVM_MAJOR" || true)" \
        "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata" \
        "$(command -v llvm-profdata || true)"; do
        [[ -n "$c" && -x "$c" && "$(profdata_major "$c")" == "$LLVM_MAJOR" ]] && { PROFDATA=$c; return 0; }
    done
    return 1
}
PROFDATA=""
if ! find_profdata; then
    log "installing llvm-$LLVM_MAJOR (llvm-profdata for rustc's LLVM $LLVM_MAJOR)"
    apt_install "llvm-$LLVM_MAJOR" || true
    find_profdata || die "no llvm-profdata for LLVM $LLVM_MAJOR: set LLVM_PROFDATA, or run 'rustup component add llvm-tools'"
fi
log "llvm-profdata: $PROFDATA (LLVM $LLVM_MAJOR)"
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk || true; }
command -v wrk >/dev/null || die "wrk missing and could not be installed"
command -v curl >/dev/null || die "curl missing"

# ---------------------------------------------------------------- builds
EXTRA_RUSTFLAGS=${RUSTFLAGS:-}
log "cargo build --release --example bench-upstream"
(cd "$ROOT" && cargo build --release --locked --example bench-upstream >"$TMP/build-upstream.log" 2>&1) \
    || { tail -n 20 "$TMP/build-upstream.log" >&2; die "could not build the bench upstream"; }
UPSTREAM_BIN="$ROOT/target/release/examples/bench-upstream"

# The profile directory is fixed, so that cargo reuses the instrumented build when the code is
# unchanged; the old profiles are removed before training.
RAW="$GEN_DIR/profraw"
log "instrumented build -> $GEN_DIR"
(cd "$ROOT" && RUSTFLAGS="$EXTRA_RUSTFLAGS -Cprofile-generate=$RAW" CARGO_TARGET_DIR="$GEN_DIR" \
    cargo build --release --locked --bin sidekey >"$TMP/build-gen.log" 2>&1) \
    || { tail -n 20 "$TMP/build-gen.log" >&2; die "instrumented build failed"; }

# ---------------------------------------------------------------- training
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
USED_PORTS=" "
pick_port() { # sets PORT to a free port on 127.0.0.1, never one picked before
    local p i
    for i in $(seq 200); do
        p=$(( (RANDOM * 32768 + RANDOM) % 30000 + 20000 ))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_open "$p" || { USED_PORTS+="$p "; PORT=$p; return 0; }
    done
    die "no free port found"
}
wait_port() { # wait_port PORT PID
    local i
    for i in $(seq 300); do
        kill -0 "$2" 2>/dev/null || return 1
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

rm -rf "$RAW"
pick_port; UPORT=$PORT
"$UPSTREAM_BIN" --listen "$HOST:$UPORT" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_port "$UPORT" "$UP_PID" || die "upstream did not start"

write_sidekey_config "$TMP" "$UPORT"
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
HDRS=(-H "Authorization: Bearer bench-caller-key" -H "Connection-Id: c1" -H "Provider-Config-Key: bench")

train() { # train CONNS PATH [wrk args...]
    local c=$1 path=$2; shift 2
    log "training ($THREADS worker thread(s)): $c connection(s), $path, ${TRAIN_SECONDS}s"
    local out
    out=$(timeout $((TRAIN_SECONDS + 30)) wrk -t1 -c"$c" -d"${TRAIN_SECONDS}s" "${HDRS[@]}" "$@" "$BASE$path" 2>&1) \
        || { printf '%s\n' "$out" >&2; die "wrk failed"; }
    # A profile trained on error answers would make the error path hot: refuse it.
    if grep -q -e 'Non-2xx' -e 'Socket errors' <<<"$out"; then
        printf '%s\n' "$out" >&2; die "training requests failed"
    fi
}

# Stops the instrumented sidekey gracefully, so that it writes its profile, within 30 s.
stop_trained() {
    local pid=$1 p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        die "the instrumented sidekey did not stop within 30 s; no profile"
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
    compgen -G "$RAW/sidekey-$pid-*.profraw" >/dev/null \
        || { tail -n 20 "$TMP/sidekey-$THREADS.log" >&2; die "the instrumented sidekey ($THREADS worker thread(s)) wrote no profile"; }
}

# One instrumented sidekey per runtime: one worker thread is tokio's current-thread runtime
# (a sidecar on one CPU), more is the multi-thread one (the default on a bigger host); both
# schedulers' code should count as hot.
for THREADS in 1 2; do
    pick_port; SPORT=$PORT
    pick_port; APORT=$PORT
    env SIDEKEY_SECRET_KEY=bench-caller-key SIDEKEY_WORKER_THREADS="$THREADS" RUST_LOG=warn \
        LLVM_PROFILE_FILE="$RAW/sidekey-%p-%m.profraw" \
        "$GEN_DIR/release/sidekey" serve --listen "$HOST:$SPORT" --admin-listen "$HOST:$APORT" \
        --providers "$TMP/providers.yaml" --vault "$TMP/vault.yaml" >"$TMP/sidekey-$THREADS.log" 2>&1 &
    SK_PID=$!; PIDS+=("$SK_PID")
    wait_port "$SPORT" "$SK_PID" || { cat "$TMP/sidekey-$THREADS.log" >&2; die "instrumented sidekey did not start"; }
    BASE="http://$HOST:$SPORT/proxy"
    code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "${HDRS[@]}" "$BASE/items" || true)
    [[ "$code" == 200 ]] || die "training request got HTTP $code, expected 200"
    train 32 /items
    train 1 /items
    train 8 /sink -s "$TMP/post.lua"
    train 2 /stream/1048576
    stop_trained "$SK_PID"
done

"$PROFDATA" merge -o "$TMP/sidekey.profdata" "$RAW"/*.profraw || die "llvm-profdata merge failed"
# Named by its content: cargo does not watch the file, but it does rebuild when RUSTFLAGS
# change, so a new profile means a new build and an unchanged one reuses the last.
mkdir -p "$USE_DIR"
rm -f "$USE_DIR"/sidekey-*.profdata
PROFILE="$USE_DIR/sidekey-$(sha256sum "$TMP/sidekey.profdata" | cut -c1-12).profdata"
mv "$TMP/sidekey.profdata" "$PROFILE"
log "profile: $PROFILE ($(du -h "$PROFILE" | cut -f1))"

# ---------------------------------------------------------------- optimised build
log "optimised build -> $USE_DIR"
(cd "$ROOT" && RUSTFLAGS="$EXTRA_RUSTFLAGS -Cprofile-use=$PROFILE" CARGO_TARGET_DIR="$USE_DIR" \
    cargo build --release --locked --bin sidekey >"$TMP/build-use.log" 2>&1) \
    || { tail -n 20 "$TMP/build-use.log" >&2; die "profile-use build failed"; }
log "built $USE_DIR/release/sidekey"
echo "$USE_DIR/release/sidekey"
