-- wrk script: each request asks for a random frame of one instance.
--   wrk ... -s frames.lua URL -- PATHS_FILE ACCEPT MAX_REQUESTS_PER_THREAD
-- PATHS_FILE has one URL path per line (one per frame). ACCEPT is sent as the
-- Accept header ("-" for none). A thread stops after MAX responses, so a slow
-- server's run is bounded by count as well as by wrk's -d duration.
-- done() prints one line "RESULT {json}" for frames.py to parse.

local paths = {}
local accept = nil
local max_responses = 0
local responses = 0
local bad_status = 0
local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   for line in io.lines(args[1]) do
      paths[#paths + 1] = line
   end
   if args[2] and args[2] ~= "-" then accept = args[2] end
   max_responses = tonumber(args[3] or "0")
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local headers = {}
   if accept then headers["Accept"] = accept end
   return wrk.format("GET", paths[math.random(#paths)], headers)
end

function response(status, headers, body)
   responses = responses + 1
   if status ~= 200 then bad_status = bad_status + 1 end
   if max_responses > 0 and responses >= max_responses then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, t in ipairs(threads) do bad = bad + (t:get("bad_status") or 0) end
   io.write(string.format(
      'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
      '"status_errors": %d, "timeouts": %d, "not_200": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.status, summary.errors.timeout, bad,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
