-- repair.lua: put back jobs that Redis lost although the flow's snapshot says they are
-- queued or running (Redis restarted from an older snapshot, a failover to a replica
-- that lagged, keys evicted or removed by hand). Unlike enqueue.lua it also replaces a
-- job whose field exists but whose stream entry or delayed member is gone, and one
-- whose field says done although the engine never applied its outcome (its completion
-- record was lost): the job then runs again, which at-least-once delivery allows.
-- Each job is re-checked here, so a job that is fine by now is left alone.
--
-- KEYS[1]          P:flow:{flow_id}:jobs   the flow's jobs hash
-- KEYS and ARGV as in enqueue.lua.
-- Returns the number of jobs put back.

local hash = KEYS[1]
local P = string.match(hash, '^(.*):flow:[^:]*:jobs$')
local group = ARGV[1]
local njobs = (#ARGV - 1) / 6
local delayed_queues = KEYS[2 * njobs + 2]
local repaired = 0

-- Whether the job's field, entry or delayed member is gone. A job whose entry is
-- there but whose concurrency slot was lost gets its slot back here (it runs, so it
-- holds one), and counts as repaired.
local function lost(value, stream, delayed, field)
  if not value or value == 'done' then
    return true
  end
  local ok, state = pcall(cjson.decode, value)
  if not ok or type(state) ~= 'table' then
    return true
  end
  local job = job_of(hash, field)
  local ref = hash .. '|' .. field
  if state.s == 'queued' then
    if type(state.e) ~= 'string' or #redis.call('XRANGE', stream, state.e, state.e) == 0 then
      return true
    end
    if state.ck and not redis.call('ZSCORE', P .. ':ck:' .. state.ck .. ':run', job) then
      redis.call('ZADD', P .. ':ck:' .. state.ck .. ':run', clock_ms(), job)
      repaired = repaired + 1
    end
    return false
  end
  if state.s == 'delayed' then
    return type(state.m) ~= 'string' or not redis.call('ZSCORE', delayed, state.m)
  end
  if state.s == 'fheld' then
    return not redis.call('ZSCORE', P .. ':fk:' .. tostring(state.fk) .. ':wait',
      string.match(hash, ':flow:(.*):jobs$'))
  end
  if state.s == 'held' then
    return not redis.call('ZSCORE', P .. ':ck:' .. tostring(state.ck) .. ':wait', ref)
  end
  if state.s == 'rate' then
    if state.ck and not redis.call('ZSCORE', P .. ':ck:' .. state.ck .. ':run', job) then
      redis.call('ZADD', P .. ':ck:' .. state.ck .. ':run', clock_ms(), job)
    end
    return not redis.call('ZSCORE', P .. ':rl:' .. tostring(state.rk) .. ':wait', ref)
  end
  return true
end

for k = 1, njobs do
  local stream = KEYS[2 * k]
  local delayed = KEYS[2 * k + 1]
  local field = ARGV[6 * k - 4]
  local job = {
    queue = ARGV[6 * k - 3], due = ARGV[6 * k - 2], lane = tonumber(ARGV[6 * k - 1]),
    limits = ARGV[6 * k], envelope = ARGV[6 * k + 1], delayed = delayed,
    delayed_queues = delayed_queues,
  }

  if lost(redis.call('HGET', hash, field), stream, delayed, field) then
    if not place_job(P, hash, field, job, group) then
      -- The stream may exist without its group (restored from a snapshot taken
      -- before the group was created): create it from the start, as enqueue does.
      if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
      else
        redis.pcall('XGROUP', 'CREATE', stream, group, '0')
      end
      local id = redis.call('XADD', stream, '*', 'envelope', job.envelope)
      redis.call('HSET', hash, field, cjson.encode({ s = 'queued', q = job.queue, l = job.lane, e = id }))
    end
    repaired = repaired + 1
  end
end

return repaired
