-- wrk script for the receiver's own ceiling (bench/webhooks/webhooks.py): POSTs a body
-- the size and shape of one Kiln webhook delivery (`kiln` format) with the headers Kiln
-- sends; same RESULT line as bench/load/ingest.lua. Run once with keep-alive and once
-- with `-H "Connection: close"` (Kiln's sender opens a connection per delivery).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Kiln-Webhooks/bench"
wrk.headers["webhook-id"] = "12345"
wrk.headers["webhook-timestamp"] = "1764000000"
wrk.headers["webhook-signature"] = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="
wrk.headers["x-webhook-signature"] = "2b9a197f337de59f5456ed44b1f4267d535086791998fd60fd31ca351707f1c1"
wrk.headers["x-kiln-event"] = "build_progress"
wrk.body = '{"buildId":"00000000-0000-4000-8000-000000000001","type":"build_progress",' ..
  '"data":{"runId":"00000000-0000-4000-8000-000000000001","event":"build_progress",' ..
  '"eventId":"fan-1-1","stage":"Build","host":"h1","pid":123,"command":"make","progress":42,' ..
  '"message":"receiver ceiling filler","id":0,"seq":2,"receivedAt":"2026-11-25T01:00:00.000Z"},' ..
  '"timestamp":"2026-11-25T01:00:00.000Z"}'

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
