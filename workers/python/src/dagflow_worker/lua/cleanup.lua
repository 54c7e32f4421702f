-- cleanup.lua: remove everything Redis holds for one flow, atomically.
--
-- The caller read the jobs hash first to learn which queues the flow used, so that
-- every key is declared. If the hash names a queue the caller did not pass (a job was
-- enqueued in between), nothing is changed and the missing queue names are returned
-- for the caller to retry with.
--
-- KEYS[1]          P:flow:{flow_id}:jobs
-- KEYS[2+21(i-2)]  P:q:{queue}:delayed  for the queue named in ARGV[i] (i = 2..)
-- KEYS[3+21(i-2)+j] the lane stream with lane index j (0..19) of the same queue, in
--                  the order workers serve them (P:q:{queue}:9, P:q:{queue}:9:new,
--                  P:q:{queue}:8, ..., P:q:{queue}:0:new)
-- ARGV[1]          consumer group of the queue streams ("workers")
-- ARGV[2..]        queue names
-- Returns the number of job fields removed, or an array of queue names to add.

local hash = KEYS[1]
local P = string.match(hash, '^(.*):flow:[^:]*:jobs$')
local group = ARGV[1]

local queues = {}
local LANES = 20
for i = 2, #ARGV do
  local base = 2 + (LANES + 1) * (i - 2)
  local lanes = {}
  for j = 0, LANES - 1 do
    lanes[j] = KEYS[base + 1 + j]
  end
  queues[ARGV[i]] = { delayed = KEYS[base], lanes = lanes }
end

-- Values are "done" or JSON objects {"s":state,"q":queue,...}; anything else is
-- foreign and only deleted with the hash.
local function decode(value)
  if value == 'done' then
    return nil
  end
  local ok, state = pcall(cjson.decode, value)
  if ok and type(state) == 'table' and type(state.q) == 'string' then
    return state
  end
  return nil
end

local all = redis.call('HGETALL', hash)

-- First pass: make sure every key about to be touched was declared.
local missing = {}
local seen = {}
for j = 2, #all, 2 do
  local state = decode(all[j])
  if state and not queues[state.q] and not seen[state.q] then
    seen[state.q] = true
    missing[#missing + 1] = state.q
  end
end
if #missing > 0 then
  return missing
end

-- The hash goes first: a slot released below must not go to a job of this very
-- flow (limits_release skips jobs whose field is gone).
local flow_marker = redis.call('HGET', hash, ':fk')
redis.call('DEL', hash)

-- Second pass: remove the flow's jobs from the streams (acknowledged first, so no
-- consumer keeps a pending entry for them) and from the delayed sets, and take its
-- waiting jobs off their keys' waiting lists.
local slots = {}
for j = 2, #all, 2 do
  local state = decode(all[j])
  if state then
    local keys = queues[state.q]
    local stream = keys.lanes[tonumber(state.l) or -1]
    if state.s == 'queued' and type(state.e) == 'string' and stream then
      redis.pcall('XACK', stream, group, state.e)
      redis.call('XDEL', stream, state.e)
    elseif state.s == 'delayed' and type(state.m) == 'string' then
      redis.call('ZREM', keys.delayed, state.m)
    end
    if state.s == 'fheld' then
      count_held(P, state.q, 'f:' .. tostring(state.fk), -1)
    elseif state.s == 'held' or state.s == 'rate' then
      limits_release(P, hash, all[j - 1], state, group)
    elseif state.ck and state.s == 'queued' then
      slots[#slots + 1] = { all[j - 1], state }
    end
  end
end

-- Last, the concurrency slots its jobs held go to the next waiting jobs, and its
-- flow slot to the next waiting flow.
for _, slot in ipairs(slots) do
  limits_release(P, hash, slot[1], slot[2], group)
end
if flow_marker then
  release_flow(P, string.match(hash, ':flow:(.*):jobs$'), flow_marker, group)
end

return #all / 2
