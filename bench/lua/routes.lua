-- wrk script for bench.http_bench's routes section: one method of /hashes/<name>, with bounded keys.
--
--   wrk -t2 -c200 -d3s -s bench/lua/routes.lua http://127.0.0.1:PORT -- <method> <keys> <threads> <expected>
--
-- <method>, what each request does (the benchmark creates the keys before the run):
--   get     GET /hashes/check:<i>, i random below <keys>: an existing hash (3 fields)
--   put     PUT /hashes/put:<i>, i random: replaces the hash with the same 3 fields, n = a counter
--   patch   PATCH /hashes/patch:<i>, i random: sets one existing field (n), so the hash never grows
--   delete  DELETE /hashes/del:<i>, each i once: thread t takes t, t + threads, t + 2 threads, ... (never two
--           deletes of one key; past <keys> the replies turn 404, which counts as unexpected)
-- <expected> is the comma-separated list of statuses that count as success (e.g. "200,201"); every other
-- status counts as "unexpected" (the benchmark's errors, with the socket errors). done() prints the summary
-- line of report.lua with the counters "expected" and "unexpected".

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local threads = bench_numbered_threads()

local method, keys, nthreads
local ok_status = {}
local counter = 0
local json_headers = {["Content-Type"] = "application/json"}
expected, unexpected = 0, 0

function init(args)
  method = args[1]
  keys = tonumber(args[2])
  nthreads = tonumber(args[3])
  for s in string.gmatch(args[4], "%d+") do ok_status[tonumber(s)] = true end
  math.randomseed(os.time() * 1000 + tid)
end

local builders = {
  get = function()
    return wrk.format("GET", "/hashes/check:" .. math.random(0, keys - 1))
  end,
  put = function()
    local name = "put:" .. math.random(0, keys - 1)
    local body = string.format('{"key":"%s","n":"%d","pad":"xxxxxxxxxxxx"}', name, counter)
    return wrk.format("PUT", "/hashes/" .. name, json_headers, body)
  end,
  patch = function()
    local body = string.format('{"n":"%d"}', counter)
    return wrk.format("PATCH", "/hashes/patch:" .. math.random(0, keys - 1), json_headers, body)
  end,
  delete = function()
    return wrk.format("DELETE", "/hashes/del:" .. (tid + nthreads * counter))
  end,
}

function request()
  local r = builders[method]()
  counter = counter + 1
  return r
end

function response(status, headers, body)
  if ok_status[status] then
    expected = expected + 1
  else
    unexpected = unexpected + 1
  end
end

done = function(summary, latency, requests)
  local totals = {expected = 0, unexpected = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(totals) do totals[k] = totals[k] + (thread:get(k) or 0) end
  end
  bench_report(summary, latency, totals)
end
