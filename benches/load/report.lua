-- wrk script for benches/load/run.sh.
-- Request headers are passed with -H on the wrk command line (they differ
-- per layout); this script only adds a machine-readable summary line so the
-- harness does not have to parse wrk's human units (run.sh still falls back
-- to parsing the "Latency Distribution" block if this line is missing).
--
-- All latencies are in microseconds, rps is requests / measured duration.
-- status_errors counts non-2xx/3xx responses (e.g. 401 = injection failed).

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_s=%.3f rps=%.2f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
