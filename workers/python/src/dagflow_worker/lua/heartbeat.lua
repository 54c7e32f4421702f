-- heartbeat.lua: record that a worker is alive and forget workers that stopped
-- beating.
--
-- KEYS[1]   P:workers
-- ARGV[1]   the worker id
-- ARGV[2]   the worker's info, a compact JSON object without "ts" ({"queues":[...],
--           "handlers":[...],"intervalMs":N,...}); "ts" (ms) is added here from the
--           Redis clock so that the clocks of the workers' machines never have to agree
-- ARGV[3]   the heartbeat interval (ms) assumed for entries that carry no intervalMs
-- A worker is forgotten when its ts is older than 3 of its intervals.
-- Returns the number of workers forgotten.

local workers = KEYS[1]
local time = redis.call('TIME')
-- Built as text so that no number is ever printed in floating-point notation.
local now_text = time[1] .. string.format('%03d', math.floor(tonumber(time[2]) / 1000))
local now = tonumber(now_text)
local default_interval = tonumber(ARGV[3])

-- Splice "ts" into the object as text rather than decoding and re-encoding it: cjson
-- would turn empty arrays into objects.
local info = ARGV[2]
local value
if info == '{}' then
  value = '{"ts":' .. now_text .. '}'
else
  value = '{"ts":' .. now_text .. ',' .. string.sub(info, 2)
end
redis.call('HSET', workers, ARGV[1], value)

local pruned = 0
local all = redis.call('HGETALL', workers)
for j = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[j + 1])
  local stale = true
  if ok and type(entry) == 'table' and type(entry.ts) == 'number' then
    local interval = default_interval
    if type(entry.intervalMs) == 'number' and entry.intervalMs > 0 then
      interval = entry.intervalMs
    end
    stale = now - entry.ts > 3 * interval
  end
  if stale then
    redis.call('HDEL', workers, all[j])
    pruned = pruned + 1
  end
end

return pruned
