-- wrk script: each request asks for a random frame of one instance.
--   wrk ... -s frames.lua URL -- PATHS_FILE ACCEPT MAX_REQUESTS_PER_THREAD [TOKEN [PATTERN]]
-- PATHS_FILE has two lines: the URL path of a frame without its number, and the
-- number of frames; a request asks for PREFIX .. random(1, COUNT). The URL is built
-- per request rather than picked from a table of every path: with a table of
-- 49,152 strings (which every Lua garbage collection walks; each response body
-- becomes a Lua string) wrk used about twice the CPU per request it used with 192,
-- and wrk shares the cores with the server under test. ACCEPT is sent as the
-- Accept header ("-" for none). A thread stops after MAX responses, so a slow
-- server's run is bounded by count as well as by wrk's -d duration. TOKEN, when given,
-- is sent as "Authorization: Bearer TOKEN" (bench/auth_bench.py).
-- PATTERN ("-" or absent: random) says which frames are asked for: "random" one random
-- frame per request; "row:K" one frame per request, K consecutive frames from a random
-- start per wrk thread, shared by its connections in flight (a viewer filling a tile row
-- with parallel requests), then a new random start; "multi:K" K consecutive frames from
-- a random start in one request (frames/7,8,9,...). Frames/s is then K x requests/s.
-- done() prints one line "RESULT {json}" for frames.py to parse.

local prefix = nil
local count = 0
local accept = nil
local token = nil
local max_responses = 0
local mode = "random"
local run = 1
local walked = 0
local position = 0
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
   local lines = io.lines(args[1])
   prefix = lines()
   count = tonumber(lines())
   if args[2] and args[2] ~= "-" then accept = args[2] end
   max_responses = tonumber(args[3] or "0")
   if args[4] and args[4] ~= "-" then token = args[4] end
   if args[5] and args[5] ~= "-" and args[5] ~= "random" then
      mode, run = args[5]:match("^(%a+):(%d+)$")
      run = tonumber(run)
      if (mode ~= "row" and mode ~= "multi") or not run or run < 1 then
         error("PATTERN must be random, row:K or multi:K, not " .. args[5])
      end
      run = math.min(run, count)
   end
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local headers = {}
   if accept then headers["Accept"] = accept end
   if token then headers["Authorization"] = "Bearer " .. token end
   if mode == "row" then
      if walked == 0 or walked >= run or position >= count then
         position, walked = math.random(count - run + 1), 0
      else
         position = position + 1
      end
      walked = walked + 1
      return wrk.format("GET", prefix .. position, headers)
   elseif mode == "multi" then
      local first = math.random(count - run + 1)
      local numbers = {}
      for i = 0, run - 1 do numbers[#numbers + 1] = tostring(first + i) end
      return wrk.format("GET", prefix .. table.concat(numbers, ","), headers)
   end
   return wrk.format("GET", prefix .. math.random(count), headers)
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
