-- wrk script for Kiln's ingest (and the baselines, which accept the same body).
--
--   [WRK_RATE=R] [WRK_BATCH=N] wrk -t2 -c64 -d15s -s bench/load/ingest.lua URL/api/v1/events -- TOKEN TAG 2
--
-- (TOKEN may be "" for the baselines; TAG makes event ids unique; the last argument must
-- equal wrk's -t.)
--
-- Every request POSTs ONE event with a unique eventId (TAG-thread-counter, so runs that
-- share a database never collide). 64 run ids are split between the threads; each thread
-- cycles through its share, so with 64 connections each run id sees about one connection's
-- traffic. The builds must already exist (run.sh sends one build_started per run id first);
-- the load sends only heartbeat / build_progress / stage_started, never a terminal event.
--
-- WRK_RATE (total requests/s over all threads; absent or 0 = as fast as possible) paces the
-- requests on a fixed schedule per thread (slot k is due at start + k/rate, a connection
-- that is free sends the next due slot, late slots are sent at once), which is what wrk2
-- would do; latency is measured by wrk from the moment a request is written.
--
-- WRK_NO_EVENT_ID=1 drops eventId (a diagnostic of the dedup cost, not part of run.sh).
-- WRK_BATCH=N (default 1) sends N events per request as a JSON array instead (an extra
-- measurement of the storage path with the per-request HTTP cost amortised).
--
-- done() prints one machine-readable line starting with "RESULT".

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } kiln_timespec;
  int clock_gettime(int clk_id, kiln_timespec *tp);
]]
local ts = ffi.new("kiln_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- WRK_RUNS=N (diagnostics only) spreads the load over N run ids instead of 64.
local RUN_IDS = tonumber(os.getenv("WRK_RUNS") or "64") or 64
-- setup() runs in wrk's main Lua state, once per thread just before that thread starts;
-- thread:set() defines the GLOBAL thread_index in the thread's own state. The thread count
-- is passed as an argument: thread 1 is already running when thread 2 is set up.
local setup_count = 0
thread_index = 1

function setup(thread)
  setup_count = setup_count + 1
  thread:set("thread_index", setup_count)
end

local token, tag
local rate = tonumber(os.getenv("WRK_RATE") or "0") or 0
local batch = tonumber(os.getenv("WRK_BATCH") or "1") or 1
-- WRK_NO_EVENT_ID=1 leaves eventId out (diagnostics only: it skips Kiln's dedup lookup).
local with_id = os.getenv("WRK_NO_EVENT_ID") ~= "1"
local counter = 0
local my_runs = {}
local interval, next_slot = nil, nil
local stages = { "Build", "Test", "Package" }

function run_id(n)
  return string.format("00000000-0000-4000-8000-%012d", n)
end

function init(args)
  token = args[1] or ""
  tag = args[2] or tostring(os.time())
  thread_count = tonumber(args[3] or "1") or 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

local function ensure_runs()
  if #my_runs > 0 then return end
  local tc, ti = thread_count, thread_index
  for n = 1, RUN_IDS do
    if (n - 1) % tc == ti - 1 then
      table.insert(my_runs, run_id(n))
    end
  end
  if #my_runs == 0 then
    table.insert(my_runs, run_id(1))
  end
  if rate > 0 then
    interval = 1000.0 * tc / rate
    next_slot = now_ms()
  end
end

local function event()
  counter = counter + 1
  local run = my_runs[(counter % #my_runs) + 1]
  local kind = counter % 3
  local body
  if kind == 0 then
    body = string.format(
      '{"runId":"%s","event":"heartbeat","eventId":"%s-%d-%d","stage":"Build","host":"h1","pid":123,"command":"make"}',
      run, tag, thread_index, counter)
  elseif kind == 1 then
    body = string.format(
      '{"runId":"%s","event":"build_progress","eventId":"%s-%d-%d","stage":"Build","host":"h1","pid":123,"command":"make","progress":%d}',
      run, tag, thread_index, counter, counter % 100)
  else
    body = string.format(
      '{"runId":"%s","event":"stage_started","eventId":"%s-%d-%d","stage":"%s","host":"h1","pid":123,"command":"make"}',
      run, tag, thread_index, counter, stages[(math.floor(counter / 3) % 3) + 1])
  end
  if not with_id then
    body = body:gsub('"eventId":"[^"]*",', "", 1)
  end
  return body
end

function request()
  ensure_runs()
  if batch <= 1 then
    return wrk.format(nil, nil, nil, event())
  end
  local events = {}
  for i = 1, batch do
    events[i] = event()
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(events, ",") .. "]")
end

-- Without a rate, delay() must not exist at all: wrk then sends the next request straight
-- from the response handler instead of through a 0 ms timer.
if rate > 0 then
function delay()
  ensure_runs()
  local slot = next_slot
  next_slot = next_slot + interval
  local wait = slot - now_ms()
  if wait < 1 then return 0 end
  return math.floor(wait)
end
end

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
