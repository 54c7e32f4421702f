-- limits.lua: concurrency keys and rate limits. The engine prepends this file to
-- every script that puts a job on a lane (enqueue, repair, promote, rate) or ends
-- one (ack, cleanup); report.lua, which workers of other languages ship as it is,
-- carries the part it needs (`limits_release`) between the same markers, and a test
-- keeps the two copies equal.
--
-- Keys (P is the prefix, derived by each script from a key it is given). A key
-- value ({key}) is any string a user's expression gives, so every name built from
-- one ends in a fixed suffix (:run, :wait, :tat) that no other name of its family
-- ends in: no value can make one key's name another's, or a fixed name's (P:rl:due).
--   P:ck:{key}:run    sorted set: jobs holding a slot of concurrency key {key}
--                     (member = job id, score = when it got the slot, ms)
--   P:ck:{key}:wait   sorted set: jobs waiting for a slot (score = arrival order)
--   P:rl:{key}:tat    string: the rate limit's theoretical arrival time (GCRA, ms)
--   P:rl:{key}:wait   sorted set: jobs waiting for a token (score = arrival order)
--   P:rl:due          sorted set: rate keys with waiting jobs, scored by when the
--                     engine should look at them next (ms): when the next token
--                     frees, or at once when a job arrived behind waiting ones
--   P:limits:seq      counter giving waiting jobs their arrival order
--   P:fk:{key}:run    sorted set: flows holding a slot of flow concurrency key {key}
--                     (member = flow id, score = when it got the slot, ms)
--   P:fk:{key}:wait   sorted set: flows waiting for a slot (score = arrival order)
--   P:q:{queue}:held  sorted set: per queue, how many jobs each key holds back
--                     (member "c:{key}", "r:{key}" or "f:{key}", score = count)
-- A job id is "{flowId}:{node}:{attempt}"; its jobs hash is P:flow:{flowId}:jobs
-- and its field "{node}:{attempt}" (a flow id never contains ':').
--
-- A job's limits travel in its jobs-hash field (JSON): ck, cl, cs (concurrency key,
-- limit, strategy: "queue", "cancelNewest" or "cancelInProgress"), rk, rn, rp (rate
-- key, limit, period in ms), fk, fl, fs (its flow's concurrency key, limit,
-- strategy). States besides queued/delayed/done:
--   {"s":"fheld", ..., "env": <envelope>}  its flow waits for a flow slot
--   {"s":"held", ..., "env": <envelope>}   waiting for a concurrency slot
--   {"s":"rate", ..., "env": <envelope>}   holding its slot, waiting for a token
-- A flow holding or waiting for a flow slot has the field ":fk" in its jobs hash
-- ({"fk", "fl", "s": "run"|"wait"}; no job field starts with ':'), so that the
-- slot is given back when the flow ends (cleanup.lua), whatever its jobs' fields say.
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

-- Added to the arrival order of a new flow's first job waiting for a concurrency
-- slot: it waits behind every job of a started flow (2^40, far above any count of
-- arrivals and exact in a double).
local FRESH_OFFSET = 1099511627776

-- The jobs hash and field of a job id (a flow id never contains ':').
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
  local flow, rest = string.match(job, '^([^:]*):(.*)$')
  local node, attempt = string.match(rest, '^(.*):(%d+)$')
  redis.call('XADD', completions, '*', 'v', '1', 'flow', flow, 'node', node, 'attempt',
    attempt, 'job', job, 'outcome', cjson.encode({ kind = 'cancelled', message = reason }))
  redis.call('PUBLISH', P .. ':cancel', job)
end

-- Takes a job off wherever it is (its lane entry, acknowledged first; its delayed
-- member; a waiting list), by its state `st`. A concurrency slot it holds is the
-- caller's to give back (limits_release), after every job that must not get it is
-- gone.
local function drop_job(P, hash, field, st, group)
  if st.s == 'queued' and st.e then
    local stream = lane_key(P, st.q, tonumber(st.l) or 0)
    redis.pcall('XACK', stream, group, st.e)
    redis.call('XDEL', stream, st.e)
  elseif st.s == 'delayed' and st.m then
    redis.call('ZREM', P .. ':q:' .. st.q .. ':delayed', st.m)
  else
    leave_waiting(P, hash, field, st)
  end
end

-- The decoded state of a job field, or nil for "done", a flow's own field (":fk")
-- and anything that is not a job's JSON state.
local function job_state(field, value)
  if value == 'done' or string.sub(field, 1, 1) == ':' then
    return nil
  end
  local ok, st = pcall(cjson.decode, value)
  if ok and type(st) == 'table' and type(st.q) == 'string' then
    return st
  end
  return nil
end

-- Cancels every live job of a flow (a flow that lost its slot to a newer one):
-- drops them, marks them done, adds a cancel record for each, then gives back the
-- concurrency slots they held.
local function cancel_flow_jobs(P, victim, reason, group)
  local hash = P .. ':flow:' .. victim .. ':jobs'
  local all = redis.call('HGETALL', hash)
  local slots = {}
  for j = 2, #all, 2 do
    local field = all[j - 1]
    local st = job_state(field, all[j])
    if st then
      drop_job(P, hash, field, st, group)
      redis.call('HSET', hash, field, 'done')
      cancel_record(P, victim .. ':' .. field, reason)
      slots[#slots + 1] = { field, st }
    end
  end
  for _, slot in ipairs(slots) do
    give_slot(P, hash, slot[1], slot[2], group)
  end
end

-- The flow gate of a job whose flow has a flow concurrency key: nil when the flow
-- holds (or now takes) a slot, else 'held' (strategy queue: the flow waits) or
-- 'cancelled' (cancelNewest: the job is cancelled).
local function flow_gate(P, hash, flow, job, st, group, now)
  local run = P .. ':fk:' .. st.fk .. ':run'
  local wait = P .. ':fk:' .. st.fk .. ':wait'
  if redis.call('ZSCORE', run, flow) then
    return nil
  end
  local limit = tonumber(st.fl)
  local marker = { fk = st.fk, fl = st.fl, s = 'run' }
  local waiting = redis.call('ZSCORE', wait, flow)
  if not waiting and redis.call('ZCARD', run) < limit and redis.call('ZCARD', wait) == 0 then
    redis.call('ZADD', run, now, flow)
    redis.call('HSET', hash, ':fk', cjson.encode(marker))
    return nil
  end
  if st.fs == 'cancelNewest' and not waiting then
    cancel_record(P, job, 'cancelled: flow concurrency key "' .. st.fk .. '" already runs ' ..
      limit .. ' flows (strategy cancelNewest)')
    return 'cancelled'
  end
  if st.fs == 'cancelInProgress' and not waiting then
    local oldest = redis.call('ZRANGE', run, 0, 0)
    if #oldest > 0 then
      redis.call('ZREM', run, oldest[1])
      cancel_flow_jobs(P, oldest[1], 'cancelled: a newer flow of flow concurrency key "' ..
        st.fk .. '" took its slot (strategy cancelInProgress)', group)
    end
    redis.call('ZADD', run, now, flow)
    redis.call('HSET', hash, ':fk', cjson.encode(marker))
    return nil
  end
  if not waiting then
    redis.call('ZADD', wait, redis.call('INCR', P .. ':limits:seq'), flow)
    marker.s = 'wait'
    redis.call('HSET', hash, ':fk', cjson.encode(marker))
  end
  return 'held'
end

-- Puts a job through its limits: a concurrency slot (or wait, or a cancel by the
-- key's strategy), then a rate token (or wait), then its lane. `st` is the state
-- to record ({q, l, env, ck, cl, cs, rk, rn, rp}). Returns 'queued', 'held', 'rate'
-- or 'cancelled'.
local function limits_admit(P, hash, field, st, group)
  local now = clock_ms()
  local flow = string.match(hash, ':flow:(.*):jobs$')
  local job = job_of(hash, field)
  if st.fk then
    local gate = flow_gate(P, hash, flow, job, st, group, now)
    if gate then
      if gate == 'held' then
        st.s = 'fheld'
        redis.call('HSET', hash, field, cjson.encode(st))
        count_held(P, st.q, 'f:' .. st.fk, 1)
      else
        redis.call('HSET', hash, field, 'done')
      end
      return gate
    end
  end
  if st.ck then
    local run = P .. ':ck:' .. st.ck .. ':run'
    local wait = P .. ':ck:' .. st.ck .. ':wait'
    local limit = tonumber(st.cl)
    -- A job put back that still holds its slot keeps it; otherwise a slot is free
    -- when the key is under its limit and no job waits for it (those go first).
    local free = redis.call('ZSCORE', run, job)
      or (redis.call('ZCARD', run) < limit and redis.call('ZCARD', wait) == 0)
    if not free then
      if st.cs == 'cancelNewest' then
        cancel_record(P, job, 'cancelled: concurrency key "' .. st.ck .. '" already runs ' .. limit ..
          ' jobs (strategy cancelNewest)')
        redis.call('HSET', hash, field, 'done')
        return 'cancelled'
      elseif st.cs == 'cancelInProgress' then
        -- The oldest job's slot goes to this one: no release, no admission.
        local oldest = redis.call('ZRANGE', run, 0, 0)
        if #oldest > 0 then
          local victim = oldest[1]
          redis.call('ZREM', run, victim)
          local vhash, vfield = job_place(P, victim)
          local vst = vhash and job_state(vfield, redis.call('HGET', vhash, vfield) or 'done')
          if vst then
            drop_job(P, vhash, vfield, vst, group)
            redis.call('HSET', vhash, vfield, 'done')
          end
          cancel_record(P, victim, 'cancelled: a newer job of concurrency key "' .. st.ck ..
            '" took its slot (strategy cancelInProgress)')
        end
        redis.call('ZADD', run, now, job)
      else
        -- Jobs of flows that have started go before the first jobs of new ones
        -- here too (as on the lanes), so that a key's slots finish flows rather
        -- than start more of them.
        local seq = redis.call('INCR', P .. ':limits:seq')
        if tonumber(st.l) % 2 == 1 then
          seq = seq + FRESH_OFFSET
        end
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

-- Lets waiting flows of flow key `fk` take the free slots: each one's jobs that
-- waited for it go on through their own limits.
local function admit_flows(P, fk, group)
  local run = P .. ':fk:' .. fk .. ':run'
  local wait = P .. ':fk:' .. fk .. ':wait'
  while true do
    local first = redis.call('ZRANGE', wait, 0, 0)
    if #first == 0 then
      return
    end
    local flow = first[1]
    local hash = P .. ':flow:' .. flow .. ':jobs'
    local marker = redis.call('HGET', hash, ':fk')
    if not marker then
      -- The flow ended or was deleted meanwhile.
      redis.call('ZREM', wait, flow)
    else
      local m = cjson.decode(marker)
      if redis.call('ZCARD', run) >= tonumber(m.fl) then
        return
      end
      redis.call('ZREM', wait, flow)
      redis.call('ZADD', run, clock_ms(), flow)
      m.s = 'run'
      redis.call('HSET', hash, ':fk', cjson.encode(m))
      local all = redis.call('HGETALL', hash)
      for j = 2, #all, 2 do
        if string.find(all[j], '"fheld"', 1, true) then
          local st = cjson.decode(all[j])
          count_held(P, st.q, 'f:' .. fk, -1)
          st.s = nil
          limits_admit(P, hash, all[j - 1], st, group)
        end
      end
    end
  end
end

-- Gives back the flow slot (or the place among waiting flows) of a flow that ends,
-- given its ":fk" marker, and lets the next waiting flows in.
local function release_flow(P, flow, marker, group)
  local ok, m = pcall(cjson.decode, marker)
  if not ok or type(m) ~= 'table' or not m.fk then
    return
  end
  redis.call('ZREM', P .. ':fk:' .. m.fk .. ':wait', flow)
  if redis.call('ZREM', P .. ':fk:' .. m.fk .. ':run', flow) == 1 then
    admit_flows(P, m.fk, group)
  end
end

-- Puts a new or lost job (enqueue.lua, repair.lua) where it waits, when it is not
-- simply ready: a retry into its delayed set (its limits kept in its field for
-- promote.lua), a job with limits through them. Returns false for a job without
-- either: the caller puts it on its lane.
local function place_job(P, hash, field, job, group)
  if job.due ~= '0' then
    redis.call('ZADD', job.delayed, job.due, job.envelope)
    -- The engine promotes due jobs of every queue named here.
    redis.call('SADD', job.delayed_queues, job.queue)
    local value = {}
    if job.limits ~= '' then
      value = cjson.decode(job.limits)
    end
    value.s = 'delayed'
    value.q = job.queue
    value.m = job.envelope
    redis.call('HSET', hash, field, cjson.encode(value))
    return true
  end
  if job.limits ~= '' then
    -- A slot it still holds (a job put back) is kept: see limits_admit.
    local st = cjson.decode(job.limits)
    st.q = job.queue
    st.l = job.lane
    st.env = job.envelope
    limits_admit(P, hash, field, st, group)
    return true
  end
  return false
end
