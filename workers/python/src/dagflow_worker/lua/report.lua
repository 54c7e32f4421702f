-- report.lua: a worker in another process reports on a job. The completion record is
-- added and, for a final outcome, the job acknowledged, deleted and marked done, all
-- at once: a crash can never leave a job finished but unreported, or reported twice
-- and still pending.
--
-- KEYS[1]    P:completions           the completions stream
-- KEYS[2]    P:q:{queue}:{lane}      the job's lane stream
-- KEYS[3]    P:flow:{flow_id}:jobs   the job's flow's jobs hash
-- ARGV[1]    consumer group of the queue streams ("workers")
-- ARGV[2]    consumer group of the completions stream ("engine")
-- ARGV[3]    the job's stream entry id
-- ARGV[4]    the job's field "{node}:{attempt}"
-- ARGV[5]    "1" when the outcome ends the job (completed, failed), "0" otherwise
-- ARGV[6..]  the completion record as field, value pairs
--            (v, flow, node, attempt, job, outcome)
-- Returns the completion record's entry id.
--
-- A job of a concurrency key gives its slot to the next job waiting for the key,
-- in the same step. The functions that do it are a copy of the part of limits.lua
-- between the markers below (the engine's tests keep the copy equal), so that this
-- file stays self-contained for workers that ship it as it is.

-- BEGIN limits_release

-- The lane stream of a queue by lane index (see take.lua).
local function lane_key(P, queue, lane)
  local priority = 9 - math.floor(lane / 2)
  if lane % 2 == 1 then
    return P .. ':q:' .. queue .. ':' .. priority .. ':new'
  end
  return P .. ':q:' .. queue .. ':' .. priority
end

-- The job id "{flowId}:{node}:{attempt}" of a jobs hash and field.
local function job_of(hash, field)
  return string.match(hash, ':flow:(.*):jobs$') .. ':' .. field
end

-- Redis's clock in ms (fractional).
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- Counts a job held back by a key in its queue's `held` index.
local function count_held(P, queue, member, by)
  local key = P .. ':q:' .. queue .. ':held'
  local n = tonumber(redis.call('ZINCRBY', key, by, member))
  if n <= 0 then
    redis.call('ZREM', key, member)
  end
end

-- GCRA without a burst: whether a token is free now for rate key state {rk, rn,
-- rp}; takes it if so. Tokens come one every rp/rn ms, so no window of rp ms ever
-- sees more than rn starts. Returns true, or false and the time (ms) the next token
-- frees.
local function take_token(P, st, now)
  local key = P .. ':rl:' .. st.rk .. ':tat'
  local period = tonumber(st.rp)
  local interval = period / tonumber(st.rn)
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then
    tat = now
  end
  if now < tat then
    return false, tat
  end
  tat = tat + interval
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now + period))
  return true, 0
end

-- Puts a job that may run now on its lane and records it queued (keeping its
-- limits, so that its end releases its slot).
local function to_lane(P, hash, field, st, group)
  local stream = lane_key(P, st.q, st.l)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
  local id = redis.call('XADD', stream, '*', 'envelope', st.env)
  local value = { s = 'queued', q = st.q, l = st.l, e = id }
  if st.ck then
    value.ck = st.ck
    value.cl = st.cl
  end
  redis.call('HSET', hash, field, cjson.encode(value))
  return id
end

-- After a job passed its concurrency key (or had none): take a rate token or wait
-- for one, then go to the lane. `st` holds the job's state fields and `env`.
local function pass_rate(P, hash, field, st, group, now)
  if st.rk then
    local wait = P .. ':rl:' .. st.rk .. ':wait'
    local ok, next_at = false, 0
    -- Jobs already waiting for this key go first.
    if redis.call('ZCARD', wait) == 0 then
      ok, next_at = take_token(P, st, now)
    else
      next_at = now
    end
    if not ok then
      local seq = redis.call('INCR', P .. ':limits:seq')
      redis.call('ZADD', wait, seq, hash .. '|' .. field)
      local due = P .. ':rl:due'
      local current = redis.call('ZSCORE', due, st.rk)
      if not current or tonumber(current) > next_at then
        redis.call('ZADD', due, next_at, st.rk)
      end
      st.s = 'rate'
      redis.call('HSET', hash, field, cjson.encode(st))
      count_held(P, st.q, 'r:' .. st.rk, 1)
      return 'rate'
    end
  end
  to_lane(P, hash, field, st, group)
  return 'queued'
end

-- The jobs hash, field and state of member `ref` ("{hash}|{field}") of a waiting
-- list; the state is nil when the job's flow ended or was deleted meanwhile.
local function waiting_job(ref)
  local bar = string.find(ref, '|', 1, true)
  local hash = string.sub(ref, 1, bar - 1)
  local field = string.sub(ref, bar + 1)
  local value = redis.call('HGET', hash, field)
  local ok, st = false, nil
  if value then
    ok, st = pcall(cjson.decode, value)
  end
  if not ok or type(st) ~= 'table' then
    return hash, field, nil
  end
  return hash, field, st
end

-- Lets waiting jobs of concurrency key `ck` take the free slots.
local function admit_waiting(P, ck, group, now)
  local run = P .. ':ck:' .. ck .. ':run'
  local wait = P .. ':ck:' .. ck .. ':wait'
  while true do
    local first = redis.call('ZRANGE', wait, 0, 0)
    if #first == 0 then
      return
    end
    local ref = first[1]
    local hash, field, st = waiting_job(ref)
    if not st or st.s ~= 'held' then
      -- Its flow ended or was deleted meanwhile: forget it.
      redis.call('ZREM', wait, ref)
    else
      if redis.call('ZCARD', run) >= tonumber(st.cl) then
        return
      end
      redis.call('ZREM', wait, ref)
      count_held(P, st.q, 'c:' .. ck, -1)
      redis.call('ZADD', run, now, job_of(hash, field))
      pass_rate(P, hash, field, st, group, now)
    end
  end
end

-- Takes a job out of the waiting list it is in (a concurrency key's, a rate
-- limit's) and out of its queue's held-back count, by its state `st`.
local function leave_waiting(P, hash, field, st)
  local ref = hash .. '|' .. field
  if st.s == 'rate' and st.rk then
    if redis.call('ZREM', P .. ':rl:' .. st.rk .. ':wait', ref) == 1 then
      count_held(P, st.q, 'r:' .. st.rk, -1)
    end
  elseif st.s == 'held' and st.ck then
    if redis.call('ZREM', P .. ':ck:' .. st.ck .. ':wait', ref) == 1 then
      count_held(P, st.q, 'c:' .. st.ck, -1)
    end
  elseif st.s == 'fheld' and st.fk then
    count_held(P, st.q, 'f:' .. st.fk, -1)
  end
end

-- Gives back the concurrency slot a job whose state is `st` holds (a job on its
-- lane, or waiting for a token) to the next waiting job of its key.
local function give_slot(P, hash, field, st, group)
  if st.ck and st.s ~= 'held' and st.s ~= 'fheld' then
    if redis.call('ZREM', P .. ':ck:' .. st.ck .. ':run', job_of(hash, field)) == 1 then
      admit_waiting(P, st.ck, group, clock_ms())
    end
  end
end

-- Releases what a job whose state is `st` (decoded field) holds: its place among
-- waiting jobs, or its concurrency slot.
local function limits_release(P, hash, field, st, group)
  if type(st) ~= 'table' then
    return
  end
  leave_waiting(P, hash, field, st)
  give_slot(P, hash, field, st, group)
end
-- END limits_release


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
  local value = delivered_as(hash, field, id)
  if value then
    redis.call('HSET', hash, field, 'done')
    if string.find(value, '"ck"', 1, true) then
      limits_release(string.sub(completions, 1, -13), hash, field, cjson.decode(value), ARGV[1])
    end
  end
end

return record_id
