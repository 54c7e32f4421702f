-- promote.lua: move due jobs of one queue from its delayed set into their lane
-- streams.
--
-- The caller read the due members (ZRANGEBYSCORE) and decoded each envelope to find
-- its flow and its lane, so that every key touched here is declared in KEYS; this
-- script re-checks each member, so a member promoted or cleaned up since it was read
-- is skipped. A promoted job is a retry of a flow that has started: it goes to the
-- continuation lane of its priority.
--
-- KEYS[1]      P:q:{queue}:delayed
-- KEYS[2k]     P:flow:{flow_id}:jobs of member k (k = 1..n); any declared key when
--              the member's envelope could not be decoded
-- KEYS[2k+1]   the lane stream of member k, P:q:{queue}:{priority}
-- ARGV[1]      consumer group of the queue streams ("workers")
-- ARGV[2]      the queue name
-- ARGV[3k]     member k (the envelope JSON)
-- ARGV[3k+1]   field of member k "{node}:{attempt}", or "" when its envelope could not
--              be decoded (the member is then dropped)
-- ARGV[3k+2]   lane index of member k (see enqueue.lua)
-- Returns the number of jobs moved into a stream (or through their limits).

local delayed = KEYS[1]
local P = string.sub(delayed, 1, -(#ARGV[2] + 12))
local group = ARGV[1]
local queue = ARGV[2]
local n = (#ARGV - 2) / 3
local moved = 0

for k = 1, n do
  local hash = KEYS[2 * k]
  local stream = KEYS[2 * k + 1]
  local member = ARGV[3 * k]
  local field = ARGV[3 * k + 1]
  local lane = tonumber(ARGV[3 * k + 2])

  -- ZREM doubles as the check that the member is still waiting.
  if redis.call('ZREM', delayed, member) == 1 and field ~= '' then
    local state = redis.call('HGET', hash, field)
    local st = nil
    if state and state ~= 'done' and string.find(state, '"delayed"', 1, true)
        and (string.find(state, '"ck"', 1, true) or string.find(state, '"rk"', 1, true)
          or string.find(state, '"fk"', 1, true)) then
      st = cjson.decode(state)
    end
    -- A job its flow no longer holds belongs to a deleted flow: drop it.
    if st then
      -- A retry with limits goes through them again (its earlier attempt gave its
      -- slot back when it ended).
      st.s = nil
      st.m = nil
      st.q = queue
      st.l = lane
      st.env = member
      limits_admit(P, hash, field, st, group)
      moved = moved + 1
    elseif state and state ~= 'done' then
      if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
      end
      local id = redis.call('XADD', stream, '*', 'envelope', member)
      redis.call('HSET', hash, field, cjson.encode({ s = 'queued', q = queue, l = lane, e = id }))
      moved = moved + 1
    end
  end
end

return moved
