-- limits.lua: concurrency keys and rate limits. The engine prepends this file to
-- every script that puts a job on a lane (enqueue, repair, promote, rate) or ends
-- one (ack, cleanup); report.lua, which workers of other languages ship as it is,
-- carries the part it needs (`limits_release`) between the same markers, and a test
-- keeps the two copies equal.
--
-- Keys (P is the prefix, derived by each script from a key it is given):
--   P:ck:{key}:run    sorted set: jobs holding a slot of concurrency key {key}
--                     (member = job id, score = when it got the slot, ms)
--   P:ck:{key}:wait   sorted set: jobs waiting for a slot (score = arrival order)
--   P:rl:{key}        string: the rate limit's theoretical arrival time (GCRA, ms)
--   P:rl:{key}:wait   sorted set: jobs waiting for a token (score = arrival order)
--   P:rl:due          sorted set: rate keys with waiting jobs, scored by when their
--                     next token frees (ms); the engine releases them then
--   P:limits:seq      counter giving waiting jobs their arrival order
--   P:q:{queue}:held  sorted set: per queue, how many jobs each key holds back
--                     (member "c:{key}" or "r:{key}", score = count)
-- A job id is "{flowId}:{node}:{attempt}"; its jobs hash is P:flow:{flowId}:jobs
-- and its field "{node}:{attempt}" (a flow id never contains ':').
--
-- A job's limits travel in its jobs-hash field (JSON): ck, cl, cs (concurrency key,
-- limit, strategy: "queue", "cancelNewest" or "cancelInProgress"), rk, rn, rp (rate
-- key, limit, period in ms). States besides queued/delayed/done:
--   {"s":"held", ..., "env": <envelope>}   waiting for a concurrency slot
--   {"s":"rate", ..., "env": <envelope>}   holding its slot, waiting for a token
-- BEGIN limits_release

-- The lane stream of a queue by lane index (see take.lua).
local function lane_key(P, queue, lane)
  local priority = 9 - math.floor(lane / 2)
  if lane % 2 == 1 then
    return P .. ':q:' .. queue .. ':' .. priority .. ':new'
  end
  return P .. ':q:' .. queue .. ':' .. priority
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
  local key = P .. ':rl:' .. st.rk
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
    local bar = string.find(ref, '|', 1, true)
    local hash = string.sub(ref, 1, bar - 1)
    local field = string.sub(ref, bar + 1)
    local value = redis.call('HGET', hash, field)
    local ok, st = false, nil
    if value then
      ok, st = pcall(cjson.decode, value)
    end
    if not ok or type(st) ~= 'table' or st.s ~= 'held' then
      -- Its flow ended or was deleted meanwhile: forget it.
      redis.call('ZREM', wait, ref)
    else
      if redis.call('ZCARD', run) >= tonumber(st.cl) then
        return
      end
      redis.call('ZREM', wait, ref)
      count_held(P, st.q, 'c:' .. ck, -1)
      local job = string.match(hash, ':flow:(.*):jobs$') .. ':' .. field
      redis.call('ZADD', run, now, job)
      pass_rate(P, hash, field, st, group, now)
    end
  end
end

-- Releases what a job whose state is `st` (decoded field) holds: its concurrency
-- slot, its place among waiting jobs; then lets the next waiting jobs of its key in.
local function limits_release(P, hash, field, st, group)
  if type(st) ~= 'table' then
    return
  end
  local job = string.match(hash, ':flow:(.*):jobs$') .. ':' .. field
  local ref = hash .. '|' .. field
  if st.s == 'rate' and st.rk then
    if redis.call('ZREM', P .. ':rl:' .. st.rk .. ':wait', ref) == 1 then
      count_held(P, st.q, 'r:' .. st.rk, -1)
    end
  end
  if st.ck then
    if st.s == 'held' then
      if redis.call('ZREM', P .. ':ck:' .. st.ck .. ':wait', ref) == 1 then
        count_held(P, st.q, 'c:' .. st.ck, -1)
      end
    elseif redis.call('ZREM', P .. ':ck:' .. st.ck .. ':run', job) == 1 then
      admit_waiting(P, st.ck, group, clock_ms())
    end
  end
end
-- END limits_release

-- The jobs hash and field of a job id.
local function job_place(P, job)
  local colon = string.find(job, ':', 1, true)
  if not colon then
    return nil, nil
  end
  return P .. ':flow:' .. string.sub(job, 1, colon - 1) .. ':jobs', string.sub(job, colon + 1)
end

-- Adds a completion record that cancels a job, as a worker's report would; the
-- engine applies it to the job's flow (the job's node ends cancelled, with reason).
local function cancel_record(P, job, reason)
  local completions = P .. ':completions'
  if redis.call('EXISTS', completions) == 0 then
    redis.call('XGROUP', 'CREATE', completions, 'engine', '0', 'MKSTREAM')
  end
  local colon = string.find(job, ':', 1, true)
  local flow = string.sub(job, 1, colon - 1)
  local rest = string.sub(job, colon + 1)
  local node, attempt = string.match(rest, '^(.*):(%d+)$')
  redis.call('XADD', completions, '*', 'v', '1', 'flow', flow, 'node', node, 'attempt',
    attempt, 'job', job, 'outcome', cjson.encode({ kind = 'cancelled', message = reason }))
  redis.call('PUBLISH', P .. ':cancel', job)
end

-- Puts a job through its limits: a concurrency slot (or wait, or a cancel by the
-- key's strategy), then a rate token (or wait), then its lane. `st` is the state
-- to record ({q, l, env, ck, cl, cs, rk, rn, rp}). Returns 'queued', 'held', 'rate'
-- or 'cancelled'.
local function limits_admit(P, hash, field, st, group)
  local now = clock_ms()
  local job = string.match(hash, ':flow:(.*):jobs$') .. ':' .. field
  if st.ck then
    local run = P .. ':ck:' .. st.ck .. ':run'
    local wait = P .. ':ck:' .. st.ck .. ':wait'
    local limit = tonumber(st.cl)
    local free = redis.call('ZSCORE', run, job) or redis.call('ZCARD', run) < limit
    -- Jobs already waiting for this key go first.
    if free and redis.call('ZCARD', wait) > 0 and not redis.call('ZSCORE', run, job) then
      free = false
    end
    if not free then
      if st.cs == 'cancelNewest' then
        cancel_record(P, job, 'cancelled: concurrency key "' .. st.ck .. '" already runs ' .. limit ..
          ' jobs (strategy cancelNewest)')
        redis.call('HSET', hash, field, 'done')
        return 'cancelled'
      elseif st.cs == 'cancelInProgress' then
        local oldest = redis.call('ZRANGE', run, 0, 0)
        if #oldest > 0 then
          local victim = oldest[1]
          local vhash, vfield = job_place(P, victim)
          redis.call('ZREM', run, victim)
          local vvalue = vhash and redis.call('HGET', vhash, vfield)
          if vvalue and vvalue ~= 'done' then
            local ok, vst = pcall(cjson.decode, vvalue)
            if ok and type(vst) == 'table' then
              if vst.s == 'queued' and vst.e then
                local stream = lane_key(P, vst.q, vst.l)
                redis.pcall('XACK', stream, group, vst.e)
                redis.call('XDEL', stream, vst.e)
              elseif vst.s == 'rate' and vst.rk then
                if redis.call('ZREM', P .. ':rl:' .. vst.rk .. ':wait', vhash .. '|' .. vfield) == 1 then
                  count_held(P, vst.q, 'r:' .. vst.rk, -1)
                end
              end
            end
            redis.call('HSET', vhash, vfield, 'done')
          end
          cancel_record(P, victim, 'cancelled: a newer job of concurrency key "' .. st.ck ..
            '" took its slot (strategy cancelInProgress)')
        end
        redis.call('ZADD', run, now, job)
      else
        local seq = redis.call('INCR', P .. ':limits:seq')
        redis.call('ZADD', wait, seq, hash .. '|' .. field)
        st.s = 'held'
        redis.call('HSET', hash, field, cjson.encode(st))
        count_held(P, st.q, 'c:' .. st.ck, 1)
        return 'held'
      end
    else
      redis.call('ZADD', run, now, job)
    end
  end
  return pass_rate(P, hash, field, st, group, now)
end
