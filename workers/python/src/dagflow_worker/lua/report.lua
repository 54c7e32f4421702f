-- report.lua: a worker in another process reports on a job. The completion record is
-- added and, for a final outcome, the job acknowledged, deleted and marked done, all
-- at once: a crash can never leave a job finished but unreported, or reported twice
-- and still pending.
--
-- KEYS[1]    P:completions           the completions stream
-- KEYS[2]    P:q:{queue}             the job's stream
-- KEYS[3]    P:flow:{flow_id}:jobs   the job's flow's jobs hash
-- ARGV[1]    consumer group of the queue streams ("workers")
-- ARGV[2]    consumer group of the completions stream ("engine")
-- ARGV[3]    the job's stream entry id
-- ARGV[4]    the job's field "{node}:{attempt}"
-- ARGV[5]    "1" when the outcome ends the job (completed, failed), "0" otherwise
-- ARGV[6..]  the completion record as field, value pairs
--            (v, flow, node, attempt, job, outcome)
-- Returns the completion record's entry id.


-- Whether the job's field names `id` as its stream entry (state queued). A plain
-- search for `"e":"<id>"` in the JSON value rather than a decode: this runs once
-- per finished job, and entry ids hold only digits and '-'.
local function delivered_as(hash, field, id)
  local value = redis.call('HGET', hash, field)
  if not value or value == 'done' then
    return false
  end
  return string.find(value, '"e":"' .. id .. '"', 1, true) ~= nil
end

local completions = KEYS[1]
local stream = KEYS[2]
local hash = KEYS[3]

-- The engine may not have created its group yet: create it from the start of the
-- stream so that records added before the engine's first read are still delivered.
if redis.call('EXISTS', completions) == 0 then
  redis.call('XGROUP', 'CREATE', completions, ARGV[2], '0', 'MKSTREAM')
end

local record = {}
for i = 6, #ARGV do
  record[#record + 1] = ARGV[i]
end
local record_id = redis.call('XADD', completions, '*', unpack(record))

if ARGV[5] == '1' then
  local id = ARGV[3]
  local field = ARGV[4]
  redis.pcall('XACK', stream, ARGV[1], id)
  redis.call('XDEL', stream, id)
  -- As in ack.lua: never recreate the hash of a deleted flow.
  -- And only the delivery this report is for (see ack.lua).
  if delivered_as(hash, field, id) then
    redis.call('HSET', hash, field, 'done')
  end
end

return record_id
