-- wrk script of bench/predict: POSTs prebuilt JSON bodies in turn and prints one JSON summary.
--
-- Environment: BENCH_BODIES is a file with one request body per line; BENCH_KEY the bearer
-- key sent with every request (both servers get the same bytes but the path). The URL given
-- to wrk carries the path. Requests are formatted once in init(), so request() only picks one.
-- A line "UNIT<tab>BODY" also sends X-Opsloop-Unit: UNIT (bench/experiments: one experiment
-- unit per body); JSON bodies never hold a raw tab, so a plain body is never split.

local requests = {}
local index = 0

function init(args)
   local key = os.getenv("BENCH_KEY") or ""
   local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. key,
   }
   local file = assert(io.open(assert(os.getenv("BENCH_BODIES"), "BENCH_BODIES is not set"), "r"))
   for line in file:lines() do
      if #line > 0 then
         local unit, body = line:match("^([^\t]*)\t(.*)$")
         if unit then
            headers["X-Opsloop-Unit"] = unit
         else
            headers["X-Opsloop-Unit"] = nil
            body = line
         end
         requests[#requests + 1] = wrk.format("POST", wrk.path, headers, body)
      end
   end
   file:close()
   assert(#requests > 0, "no request bodies in BENCH_BODIES")
end

function request()
   index = index % #requests + 1
   return requests[index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "stdev": %.1f, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max, latency.stdev,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
