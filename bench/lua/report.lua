-- wrk script for bench.http_bench: no per-request Lua (wrk's fast path); done() prints one JSON line.
--
-- The line starts with "BENCH_JSON " and holds wrk's summary (requests, errors by kind, including
-- "status": replies with a status >= 400), latency percentiles in microseconds, and the exact number of
-- replies slower than 1 s, counted from wrk's latency histogram (latency(i) gives the value and count of
-- its i-th non-empty bucket). Replies slower than wrk's --timeout are counted as timeout errors instead.
-- checked.lua and routes.lua reuse bench_report() and bench_numbered_threads() and add their own counters.

local SLOW_US = 1000000

function bench_report(summary, latency, extra)
  local recorded, slow = 0, 0
  for i = 1, #latency do
    local value, count = latency(i)
    recorded = recorded + count
    if value > SLOW_US then slow = slow + count end
  end
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
                  latency.min, latency.max, latency.mean, latency.stdev, latency:percentile(50),
                  latency:percentile(90), latency:percentile(99), latency:percentile(99.9)),
    string.format('"recorded":%d', recorded),
    string.format('"slower_than_1s":%d', slow),
  }
  for k, v in pairs(extra or {}) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end

-- For the scripts with per-request Lua: each thread gets a global "tid" (0, 1, ...); the list of threads is
-- returned for done() to sum their counters over.
function bench_numbered_threads()
  local threads, next_id = {}, 0
  setup = function(thread)
    thread:set("tid", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
  end
  return threads
end

done = function(summary, latency, requests)
  bench_report(summary, latency)
end
