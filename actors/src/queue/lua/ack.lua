-- ack.lua: acknowledge jobs that workers in the engine's process finished, after the
-- flow actor made their results durable.
--
-- KEYS[2k-1]   P:q:{queue}             stream of job k (k = 1..n)
-- KEYS[2k]     P:flow:{flow_id}:jobs   jobs hash of job k's flow
-- ARGV[1]      consumer group of the queue streams ("workers")
-- ARGV[2k]     stream entry id of job k
-- ARGV[2k+1]   field of job k: "{node}:{attempt}"
-- Returns the number of jobs given. Idempotent.


-- The job's field when it names `id` as its stream entry (state queued), else
-- false. A plain search for `"e":"<id>"` in the JSON value rather than a decode:
-- this runs once per finished job, and entry ids hold only digits and '-'.
local function delivered_as(hash, field, id)
  local value = redis.call('HGET', hash, field)
  if not value or value == 'done' then
    return false
  end
  if string.find(value, '"e":"' .. id .. '"', 1, true) == nil then
    return false
  end
  return value
end

local group = ARGV[1]
local n = (#ARGV - 1) / 2
local P = n > 0 and string.match(KEYS[2], '^(.*):flow:[^:]*:jobs$')

for k = 1, n do
  local stream = KEYS[2 * k - 1]
  local hash = KEYS[2 * k]
  local id = ARGV[2 * k]
  local field = ARGV[2 * k + 1]

  -- XACK clears the pending entry, XDEL the entry itself: a finished job holds no
  -- memory. pcall: the group is gone if Redis lost its data, which is not an error here.
  redis.pcall('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  -- Only mark a job the hash still knows: a flow deleted meanwhile must not be
  -- brought back as a one-field hash that nothing would ever remove.
  --
  -- And only the delivery this ack is for: after Redis lost the job and the engine
  -- put it back as a new entry, an ack of the old entry must not mark the new one
  -- done (it would then outlive its flow and run once more).
  local value = delivered_as(hash, field, id)
  if value then
    redis.call('HSET', hash, field, 'done')
    -- A job of a concurrency key gives its slot to the next waiting job.
    if string.find(value, '"ck"', 1, true) then
      limits_release(P, hash, field, cjson.decode(value), group)
    end
  end
end

return n
