-- wrk script for auth_bench.py: random single frames of one instance, optionally with a bearer token.
--   wrk ... -s auth_frames.lua URL -- PATHS_FILE TOKEN
-- PATHS_FILE: the frame URL path without its number, then the number of frames. TOKEN "-": none.
-- done() prints one line "RESULT {json}".

local prefix, count, token = nil, 0, nil
local threads, counter = {}, 0
bad_status = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   local lines = io.lines(args[1])
   prefix = lines()
   count = tonumber(lines())
   if args[2] and args[2] ~= "-" then token = args[2] end
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local headers = {Accept = "application/octet-stream; transfer-syntax=*"}
   if token then headers["Authorization"] = "Bearer " .. token end
   return wrk.format("GET", prefix .. math.random(count), headers)
end

function response(status, headers, body)
   if status ~= 200 then bad_status = bad_status + 1 end
end

function done(summary, latency, requests)
   local bad = 0
   for _, t in ipairs(threads) do bad = bad + (t:get("bad_status") or 0) end
   local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
   io.write(string.format('RESULT {"requests": %d, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
                          '"errors": %d, "bad_status": %d}\n',
                          summary.requests, summary.requests / (summary.duration / 1e6),
                          latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors, bad))
end
