#!/usr/bin/env bash
# Write load and memory for issue 12, on 127.0.0.1 only.
#
# For each vault size in SIZES (a generated vault of N connections in the shape of
# benches/snapshot.rs: about 176 bytes a connection, the four credential types, plus the one
# connection the proxy load uses):
#
#  1. Memory, for each binary in BINS (NAME=PATH, e.g. new and the 446c767 baseline):
#     start, wait until /live answers, stay idle, read VmRSS (steady) and VmHWM (peak while
#     loading); then reset the peak (/proc/PID/clear_refs), send SIGHUP, wait for
#     sidekey_reloads_total{result="ok"} to move, stay idle, read VmHWM (peak while
#     reloading) and VmRSS again.
#  2. Write load, first binary only (the write API is new): ROUNDS rounds, each of three
#     DURATION-second phases in rotating order:
#       proxy   wrk -c PROXY_CONNS GET /proxy/items through sidekey to bench-upstream
#       writes  WRITERS concurrent writers (wrk -c WRITERS, one request in flight each)
#               POST /connections upserting random existing connections
#       both    the two at once
#     reporting writes/s, write p50/p99, proxy req/s, p99 and failures (non-2xx, socket
#     errors), and the medians over the rounds. Then the journal's size (vault.yaml.journal:
#     writes not yet folded into the vault) right after the writes and after 2 s idle (it is
#     folded a second after writes stop). Afterwards `sidekey check` must accept the vault
#     (with its journal) and count N + 1 connections.
#
# Knobs: SIZES="10000 100000", DURATION=10, ROUNDS=3, WRITERS=16, WRITE_RATE (unset: flat
#   out; else the writers pace themselves to about that many writes/s), PROXY_CONNS=1,
#   BINS="new=target/release/sidekey" (add old=PATH for the memory baseline),
#   UPSTREAM_BIN=target/release/examples/bench-upstream, CPU_PROXY=0 (sidekey and the
#   upstream), CPU_LOADGEN=1 (both wrk), IDLE=3 (seconds idle before reading RSS),
#   SKIP_WRITES=1 (memory only), KEEP_TMP=1, SIDEKEY_LOG=warn (RUST_LOG of sidekey; e.g.
#   "warn,sidekey::store=debug" logs where each group commit's time goes, kept with KEEP_TMP=1).
# PROXY_CONNS defaults to 1: one request in flight is a latency probe that leaves CPU to
# spare, so its p99 moves with what the writes cost the proxy; at 8 or more the proxy core is
# saturated and the p99 is queueing (wrk is closed-loop, it cannot hold a fixed rate).
# Needs wrk and curl. Builds nothing: `cargo build --release --bin sidekey --example
# bench-upstream` first. Kills exactly the processes it started, by PID.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
HOST=127.0.0.1
SIZES=${SIZES:-"10000 100000"}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WRITERS=${WRITERS:-16}
# WRITE_RATE (writes/s, all writers together): writers pace themselves to about that rate
# (each waits WRITERS*1000/WRITE_RATE ms after each answer); unset = flat out.
WRITE_RATE=${WRITE_RATE:-}
WRITE_DELAY_MS=0
if [[ -n "$WRITE_RATE" ]]; then WRITE_DELAY_MS=$(( WRITERS * 1000 / WRITE_RATE )); fi
PROXY_CONNS=${PROXY_CONNS:-1}
BINS=${BINS:-"new=$ROOT/target/release/sidekey"}
UPSTREAM_BIN=${UPSTREAM_BIN:-$ROOT/target/release/examples/bench-upstream}
CPU_PROXY=${CPU_PROXY:-0}
CPU_LOADGEN=${CPU_LOADGEN:-1}
IDLE=${IDLE:-3}
SKIP_WRITES=${SKIP_WRITES:-0}
SIDEKEY_LOG=${SIDEKEY_LOG:-warn}
CALLER_KEY=bench-caller-key

log() { echo "[write-load] $*" >&2; }
die() { log "error: $*"; exit 1; }
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
[[ -x "$UPSTREAM_BIN" ]] || die "no upstream binary at $UPSTREAM_BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sidekey-write-load.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
    [[ ${KEEP_TMP:-0} == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
stop_pid() { # only a PID this script started
    local pid=$1 p keep=()
    [[ " ${PIDS[*]-} " == *" $pid "* ]] || return 0
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}
forget_pid() { # it has exited
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
pick_port() {
    while :; do
        PORT=$((20000 + RANDOM % 30000))
        port_open "$PORT" || return 0
    done
}
kib() { awk '/^'"$2"':/ {print $2}' "/proc/$1/status"; }
mib() { awk -v v="$1" 'BEGIN {printf "%.1f", v / 1024}'; }
reloads_ok() {
    curl -s "http://$HOST:$APORT/metrics" |
        awk '/^sidekey_reloads_total\{result="(ok|success)"\}/ {s += $2} END {print s + 0}'
}

# --- the upstream ----------------------------------------------------------------------
pick_port; UPORT=$PORT
taskset -c "$CPU_PROXY" "$UPSTREAM_BIN" --listen "$HOST:$UPORT" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
for _ in $(seq 100); do port_open "$UPORT" && break; sleep 0.1; done
port_open "$UPORT" || die "upstream did not start"

# --- files -----------------------------------------------------------------------------
write_files() { # write_files DIR N
    local d=$1 n=$2
    mkdir -p "$d"
    cat >"$d/providers.yaml" <<YAML
bench-api:
  auth_mode: API_KEY
  proxy:
    base_url: http://$HOST:$UPORT/api
    headers:
      authorization: Bearer \${apiKey}
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: https://\${connectionConfig.subdomain}.example.com/api/v2
    headers: {authorization: "Bearer \${apiKey}", x-tenant: "\${connectionConfig.tenant}"}
qry:
  auth_mode: API_KEY
  proxy: {base_url: "https://q.example.com", query: {api_key: "\${apiKey}"}}
basic:
  auth_mode: BASIC
  proxy: {base_url: "https://b.example.com"}
oauth:
  auth_mode: OAUTH2
  token_url: https://o.example.com/oauth/token
  proxy: {base_url: "https://api.o.example.com", retry: {after: retry-after}}
YAML
    # The same records as benches/snapshot.rs's vault_text (tokens expire in 2030, so no
    # refresh is ever due and no request leaves 127.0.0.1).
    awk -v n="$n" 'BEGIN {
        printf "secret_keys:\n  - {sha256: \"%s\"}\n", "abababababababababababababababababababababababababababababababab"
        print "integrations:\n  - {unique_key: bench, provider: bench-api}"
        split("hdr qry basic oauth", p, " ")
        for (k = 1; k <= 4; k++) printf "  - {unique_key: %s-int, provider: %s}\n", p[k], p[k]
        print "connections:\n  - {connection_id: c1, provider_config_key: bench, credentials: {type: API_KEY, apiKey: bench-upstream-token}}"
        for (i = 0; i < n; i++) {
            m = i % 4
            if (m == 0) printf "  - connection_id: user-%d\n    provider_config_key: hdr-int\n    credentials: {type: API_KEY, apiKey: \"sk_live_%016xabcdef\"}\n    connection_config: {subdomain: tenant%d, tenant: t%d}\n    metadata: {owner: team-%d}\n", i, i, i, i, i % 17
            else if (m == 1) printf "  - {connection_id: user-%d, provider_config_key: qry-int, credentials: {type: API_KEY, apiKey: \"key-%016x\"}}\n", i, i
            else if (m == 2) printf "  - {connection_id: user-%d, provider_config_key: basic-int, credentials: {type: BASIC, username: \"u%d\", password: \"p-%016x\"}}\n", i, i, i
            else printf "  - {connection_id: user-%d, provider_config_key: oauth-int, credentials: {type: OAUTH2, access_token: \"at-%016x\", refresh_token: \"rt-%016x\", expires_at: \"2030-01-01T00:00:00Z\"}}\n", i, i, i
        }
    }' >"$d/vault.yaml"
    chmod 600 "$d/vault.yaml"
}

# wrk script for the writers: each request upserts a random existing API_KEY connection of
# qry-int (user-(4k+1)), so the vault keeps its size.
cat >"$TMP/writer.lua" <<'LUA'
local n = tonumber(os.getenv("WL_N"))
local pause = tonumber(os.getenv("WL_DELAY_MS") or "0")
local seq = 0
-- With WRITE_RATE set, each writer waits between its writes, so the writers together hold
-- about that rate (less the time each write itself takes) instead of writing flat out.
if pause > 0 then
    delay = function() return pause end
end
math.randomseed(os.time())
request = function()
    seq = seq + 1
    local i = 4 * math.random(0, n / 4 - 1) + 1
    local body = string.format(
        '{"provider_config_key":"qry-int","connection_id":"user-%d","credentials":{"type":"API_KEY","apiKey":"rotated-%d"}}',
        i, seq)
    return wrk.format("POST", "/connections",
        {["Authorization"] = "Bearer bench-caller-key", ["Content-Type"] = "application/json"}, body)
end
LUA
cat "$HERE/load/report.lua" >>"$TMP/writer.lua"

# start_sidekey NAME BIN DIR: sets SK_PID, SPORT, APORT.
start_sidekey() {
    local name=$1 bin=$2 d=$3
    pick_port; SPORT=$PORT
    pick_port; APORT=$PORT
    taskset -c "$CPU_PROXY" env SIDEKEY_SECRET_KEY="$CALLER_KEY" RUST_LOG="$SIDEKEY_LOG" \
        "$bin" serve --listen "$HOST:$SPORT" --admin-listen "$HOST:$APORT" \
        --providers "$d/providers.yaml" --vault "$d/vault.yaml" >"$TMP/$name.log" 2>&1 &
    SK_PID=$!; PIDS+=("$SK_PID")
    local i
    for i in $(seq 1200); do
        kill -0 "$SK_PID" 2>/dev/null || { tail "$TMP/$name.log" >&2; die "$name exited"; }
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$APORT/live" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    die "$name not ready within 120 s"
}

# wrk_run KIND N SECONDS: prints the WRK_RESULT line.
wrk_run() {
    local kind=$1 n=$2 secs=$3
    if [[ $kind == proxy ]]; then
        taskset -c "$CPU_LOADGEN" wrk -t1 -c"$PROXY_CONNS" -d"${secs}s" --latency -s "$HERE/load/report.lua" \
            -H "Authorization: Bearer $CALLER_KEY" -H "Connection-Id: c1" -H "Provider-Config-Key: bench" \
            "http://$HOST:$SPORT/proxy/items" | grep WRK_RESULT
    else
        WL_N=$n WL_DELAY_MS=$WRITE_DELAY_MS taskset -c "$CPU_LOADGEN" wrk -t1 -c"$WRITERS" -d"${secs}s" --timeout 30s --latency \
            -s "$TMP/writer.lua" "http://$HOST:$SPORT/" | grep WRK_RESULT
    fi
}
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
fails() { # non-2xx + socket errors of a WRK_RESULT line
    echo $(($(field "$1" status_errors) + $(field "$1" connect_errors) + $(field "$1" read_errors) + $(field "$1" write_errors) + $(field "$1" timeouts)))
}
median() { sort -g | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]; else print "-"}'; }

echo "## write-load.sh results ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "- machine: $(nproc) CPUs, $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- sidekey and the upstream on CPU $CPU_PROXY, wrk on CPU $CPU_LOADGEN; DURATION=$DURATION ROUNDS=$ROUNDS WRITERS=$WRITERS WRITE_RATE=${WRITE_RATE:-flat out} PROXY_CONNS=$PROXY_CONNS"
echo
MEM_ROWS=()
WRITE_ROWS=()
SUMMARY_ROWS=()
for n in $SIZES; do
    for spec in $BINS; do
        name=${spec%%=*}; bin=${spec#*=}
        d="$TMP/$name-$n"
        write_files "$d" "$n"
        vbytes=$(stat -c %s "$d/vault.yaml")
        log "$name n=$n: start (vault $vbytes bytes)"
        t0=$(date +%s.%N)
        start_sidekey "$name-$n" "$bin" "$d"
        t1=$(date +%s.%N)
        sleep "$IDLE"
        # One proxied request, so steady state includes the request path's first allocations.
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CALLER_KEY" \
            -H "Connection-Id: c1" -H "Provider-Config-Key: bench" "http://$HOST:$SPORT/proxy/items")
        [[ $code == 200 ]] || die "$name: proxied request got $code"
        sleep 1
        rss=$(kib "$SK_PID" VmRSS); hwm=$(kib "$SK_PID" VmHWM)
        echo 5 >"/proc/$SK_PID/clear_refs"
        before=$(reloads_ok)
        t2=$(date +%s.%N)
        kill -HUP "$SK_PID"
        for _ in $(seq 1200); do (($(reloads_ok) > before)) && break; sleep 0.05; done
        t3=$(date +%s.%N)
        (($(reloads_ok) > before)) || die "$name: SIGHUP reload did not finish within 60 s"
        sleep "$IDLE"
        hwm_r=$(kib "$SK_PID" VmHWM); rss_r=$(kib "$SK_PID" VmRSS)
        MEM_ROWS+=("| $name | $n | $(mib "$rss") | $(mib "$hwm") | $(awk -v a="$hwm" -v b="$rss" 'BEGIN{printf "%.2f", a/b}') | $(mib "$hwm_r") | $(awk -v a="$hwm_r" -v b="$rss" 'BEGIN{printf "%.2f", a/b}') | $(mib "$rss_r") | $(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') | $(awk -v a="$t3" -v b="$t2" 'BEGIN{printf "%.2f", a-b}') |")
        log "$name n=$n: rss $(mib "$rss") MiB, start peak $(mib "$hwm"), reload peak $(mib "$hwm_r"), after reload $(mib "$rss_r")"

        if [[ $SKIP_WRITES != 1 && $spec == "${BINS%% *}" ]]; then
            declare -A R=()
            phases=(proxy writes both)
            for r in $(seq "$ROUNDS"); do
                for k in 0 1 2; do
                    ph=${phases[$(((k + r - 1) % 3))]}
                    log "$name n=$n round $r: $ph"
                    if [[ $ph == proxy ]]; then
                        p=$(wrk_run proxy "$n" "$DURATION"); w=""
                    elif [[ $ph == writes ]]; then
                        w=$(wrk_run writes "$n" "$DURATION"); p=""
                    else
                        wrk_run writes "$n" "$DURATION" >"$TMP/w.out" &
                        wpid=$!; PIDS+=("$wpid")
                        p=$(wrk_run proxy "$n" "$DURATION")
                        wait "$wpid" || true
                        forget_pid "$wpid"
                        w=$(cat "$TMP/w.out")
                    fi
                    pr="-"; pp99="-"; pf="-"; wr="-"; wp50="-"; wp99="-"; wf="-"
                    if [[ -n $p ]]; then
                        pr=$(field "$p" rps); pp99=$(field "$p" p99_us); pf=$(fails "$p")
                        R[$ph.prps]+="$pr "; R[$ph.pp99]+="$pp99 "; R[$ph.pf]=$((${R[$ph.pf]:-0} + pf))
                    fi
                    if [[ -n $w ]]; then
                        wr=$(field "$w" rps); wp50=$(field "$w" p50_us); wp99=$(field "$w" p99_us); wf=$(fails "$w")
                        R[$ph.wrps]+="$wr "; R[$ph.wp50]+="$wp50 "; R[$ph.wp99]+="$wp99 "; R[$ph.wf]=$((${R[$ph.wf]:-0} + wf))
                    fi
                    WRITE_ROWS+=("| $n | $r | $ph | $wr | $wp50 | $wp99 | $wf | $pr | $pp99 | $pf |")
                done
            done
            med() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | median; }
            pp=$(med proxy.pp99); bp=$(med both.pp99)
            SUMMARY_ROWS+=("| $n | $(med writes.wrps) | $(med writes.wp50) | $(med writes.wp99) | $(med both.wrps) | $(med proxy.prps) | $(med both.prps) | $pp | $bp | $(awk -v a="$bp" -v b="$pp" 'BEGIN{printf "%.2f", a/b}') | $((${R[proxy.pf]:-0} + ${R[both.pf]:-0})) | $((${R[writes.wf]:-0} + ${R[both.wf]:-0})) | $(tr ' ' '\n' <<<"${R[proxy.pp99]} ${R[both.pp99]}" | grep . | tr '\n' ' ')|")
            unset R
            # The journal (API writes not yet folded into the vault) is folded a second
            # after writes stop: its size now, and after two idle seconds.
            jpath="$d/vault.yaml.journal"
            jb=$(stat -c %s "$jpath" 2>/dev/null || echo none)
            sleep 2
            echo "- $name n=$n: journal after the writes $jb bytes, after 2 s idle $(stat -c %s "$jpath" 2>/dev/null || echo none) bytes"
            rss_w=$(kib "$SK_PID" VmRSS); hwm_w=$(kib "$SK_PID" VmHWM)
            log "$name n=$n: after writes rss $(mib "$rss_w") MiB, peak since reload $(mib "$hwm_w")"
            echo "- $name n=$n: after the write rounds VmRSS $(mib "$rss_w") MiB, VmHWM since the reload $(mib "$hwm_w") MiB"
        fi
        stop_pid "$SK_PID"
        if [[ $SKIP_WRITES != 1 && $spec == "${BINS%% *}" ]]; then
            out=$("$bin" check --providers "$d/providers.yaml" --vault "$d/vault.yaml" 2>&1) || die "check refused the written vault: $out"
            echo "- $name n=$n: \`sidekey check\` after the writes: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"
        fi
        rm -rf "$d"
    done
done
echo
echo "### Memory (MiB; peak ratios against the steady VmRSS after start)"
echo
echo "| binary | connections | steady VmRSS | peak at start | peak/steady | peak during SIGHUP reload | reload peak/steady | VmRSS after reload | start s | reload s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${MEM_ROWS[@]}"
if ((${#SUMMARY_ROWS[@]})); then
    echo
    echo "### Writes and proxied requests (medians over $ROUNDS rounds of $DURATION s; latencies in µs)"
    echo
    echo "| connections | writes/s alone | write p50 | write p99 | writes/s with proxy load | proxy req/s alone | proxy req/s with writes | proxy p99 alone | proxy p99 with writes | p99 ratio | proxy failures | write failures | proxy p99 per round (alone…, with…) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${SUMMARY_ROWS[@]}"
    echo
    echo "#### Every round"
    echo
    echo "| connections | round | phase | writes/s | write p50 | write p99 | write failures | proxy req/s | proxy p99 | proxy failures |"
    echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${WRITE_ROWS[@]}"
fi
