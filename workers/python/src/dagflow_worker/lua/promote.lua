-- promote.lua: move due jobs of one queue from its delayed set into its stream.
--
-- The caller read the due members (ZRANGEBYSCORE) and decoded each envelope to find
-- its flow, so that every key touched here is declared in KEYS; this script re-checks
-- each member, so a member promoted or cleaned up since it was read is skipped.
--
-- KEYS[1]      P:q:{queue}:delayed
-- KEYS[2]      P:q:{queue}
-- KEYS[2+k]    P:flow:{flow_id}:jobs of member k (k = 1..n); any declared key when the
--              member's envelope could not be decoded
-- ARGV[1]      consumer group of the queue streams ("workers")
-- ARGV[2]      the queue name
-- ARGV[1+2k]   member k (the envelope JSON)
-- ARGV[2+2k]   field of member k "{node}:{attempt}", or "" when its envelope could not
--              be decoded (the member is then dropped)
-- Returns the number of jobs moved into the stream.

local delayed = KEYS[1]
local stream = KEYS[2]
local group = ARGV[1]
local queue = ARGV[2]
local n = (#ARGV - 2) / 2
local moved = 0

for k = 1, n do
  local hash = KEYS[2 + k]
  local member = ARGV[1 + 2 * k]
  local field = ARGV[2 + 2 * k]

  -- ZREM doubles as the check that the member is still waiting.
  if redis.call('ZREM', delayed, member) == 1 and field ~= '' then
    local state = redis.call('HGET', hash, field)
    -- A job its flow no longer holds belongs to a deleted flow: drop it.
    if state and state ~= 'done' then
      if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
      end
      local id = redis.call('XADD', stream, '*', 'envelope', member)
      redis.call('HSET', hash, field, cjson.encode({ s = 'queued', q = queue, e = id }))
      moved = moved + 1
    end
  end
end

return moved
