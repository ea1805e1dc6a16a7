-- wrk script for bench.http_bench's checked route: GET /hashes/check:<i> for random i, and every 200 reply
-- must be the hash of the key asked for (its field "key" names it).
--
--   wrk -t2 -c200 -d5s -s bench/lua/checked.lua http://127.0.0.1:PORT -- <hashes> <threads>
--
-- wrk's Lua API does not say which request a reply answers, so each thread keeps the multiset of keys it has
-- in flight, and threads ask for disjoint keys (thread t only i = t mod threads). A 200 reply whose key is not
-- in flight on this thread counts as "wrong": a reply read by the wrong request (a stale reply left on a pooled
-- connection, or one that belongs to another thread's request) is caught; a swap between two requests in flight
-- on the same thread at that moment is not (1 in <threads> of random swaps). Non-200 replies count as
-- "non200" (wrk also counts >= 400 as status errors). Expected: wrong = 0.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local threads = bench_numbered_threads()

local hashes, nthreads, per_thread
local in_flight = {}
checked, wrong, non200 = 0, 0, 0

function init(args)
  hashes = tonumber(args[1]) or 10000
  nthreads = tonumber(args[2]) or 2
  per_thread = math.floor(hashes / nthreads)
  math.randomseed(os.time() * 1000 + tid)
end

function request()
  local name = "check:" .. (tid + nthreads * math.random(0, per_thread - 1))
  in_flight[name] = (in_flight[name] or 0) + 1
  return wrk.format("GET", "/hashes/" .. name)
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    return
  end
  local got = body:match('"key":"([^"]*)"')
  local n = got and in_flight[got]
  if n and n > 0 then
    in_flight[got] = n > 1 and n - 1 or nil
    checked = checked + 1
  else
    wrong = wrong + 1
  end
end

done = function(summary, latency, requests)
  local totals = {checked = 0, wrong = 0, non200 = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(totals) do totals[k] = totals[k] + (thread:get(k) or 0) end
  end
  bench_report(summary, latency, totals)
end
