-- wrk script for the HTTP ceiling: plain GET of the URL given (Kiln's /healthz, no
-- database, no auth), same RESULT line as ingest.lua. It shows how many request/response
-- round trips per second the server's HTTP stack and wrk manage together on this machine,
-- the upper bound for one-event-per-request ingest.
function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  local failed = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "RESULT requests=%d ok=%d failed=%d non2xx=%d timeouts=%d seconds=%.3f rps=%.1f ok_rps=%.1f " ..
    "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f\n",
    summary.requests, summary.requests - e.status, failed, e.status, e.timeout, s,
    summary.requests / s, (summary.requests - e.status) / s,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
