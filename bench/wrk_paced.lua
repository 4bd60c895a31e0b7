-- wrk at a constant rate: POSTs the request bodies of a file (one JSON per line) to /invocations (or PATH).
--
--   wrk -t N -c N -d 30s -s wrk_paced.lua http://127.0.0.1:8080 -- bodies.jsonl <total rate/s> N [PATH]
--
-- A file name with %d is one file per thread (bodies-%d.jsonl: bodies-0.jsonl for the first), for bodies too
-- many to read in every thread.
--
-- wrk is closed-loop: a connection sends its next request when the last one is answered, so a server
-- that stalls is sent less and its queueing hides (coordinated omission). Here every thread has one
-- connection and a schedule of due times at rate/N per second; `delay` waits for the next due time, and
-- latency is counted from when a request was due (or sent, if earlier), as wrk2 does. A server that
-- falls behind the schedule shows it in the percentiles and in the achieved rate.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
int clock_gettime(int clock_id, paced_timespec *now);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("paced_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

-- main state: one entry per thread, read back in done()
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

-- thread state (each thread runs its own copy of this script)
local requests = {}
local interval_us, next_due, due, sent = 0, 0, 0, 0
local cursor = 0
latencies = {}
non_2xx = 0

function init(args)
  local path, rate, connections = args[1], tonumber(args[2]), tonumber(args[3])
  local target = args[4] or "/invocations"
  -- Each thread formats only its own share of the file: wrk runs the threads' init one after another
  -- while the first threads already send, so formatting every line in each thread would keep a core
  -- busy for the first second of the run and hand the server a burst of competition that is not load.
  local per_thread = path:find("%d", 1, true) ~= nil
  local line_number = 0
  for line in io.lines(per_thread and path:gsub("%%d", tostring(index)) or path) do
    if per_thread or line_number % connections == index then
      requests[#requests + 1] = wrk.format("POST", target, { ["Content-Type"] = "application/json" }, line)
    end
    line_number = line_number + 1
  end
  interval_us = connections * 1e6 / rate
  next_due = now_us() + index * interval_us / connections -- threads take turns, not bursts
end

function delay()
  due = next_due
  next_due = next_due + interval_us
  local wait_ms = (due - now_us()) / 1000
  return wait_ms > 0 and wait_ms or 0
end

function request()
  sent = now_us()
  cursor = cursor % #requests + 1
  return requests[cursor]
end

function response(status, headers, body)
  local started = due < sent and due or sent
  latencies[#latencies + 1] = now_us() - started
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency)
  local all, failed = {}, 0
  for _, thread in ipairs(threads) do
    for _, value in ipairs(thread:get("latencies")) do
      all[#all + 1] = value
    end
    failed = failed + thread:get("non_2xx")
  end
  table.sort(all)
  local function percentile_ms(p)
    if #all == 0 then
      return -1
    end
    return all[math.max(1, math.ceil(p / 100 * #all))] / 1000
  end
  local errors = summary.errors
  io.write(
    string.format(
      '{"responses": %d, "duration_s": %.3f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, '
        .. '"non_2xx": %d, "socket_errors": %d, "timeouts": %d, "service_p50_ms": %.3f, "service_p99_ms": %.3f}\n',
      #all,
      summary.duration / 1e6,
      percentile_ms(50),
      percentile_ms(90),
      percentile_ms(99),
      percentile_ms(100),
      failed,
      errors.connect + errors.read + errors.write,
      errors.timeout,
      latency:percentile(50) / 1000,
      latency:percentile(99) / 1000
    )
  )
end
