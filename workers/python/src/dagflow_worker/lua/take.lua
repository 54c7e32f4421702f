-- take.lua: hand up to `count` ready jobs of one queue to one consumer, best first.
-- Workers call it instead of a plain XREADGROUP, so that every worker process, in
-- every language, serves the queue in the same order.
--
-- KEYS[1..20]  the queue's lane streams in the order they are served:
--              P:q:{queue}:9, P:q:{queue}:9:new, P:q:{queue}:8, ..., P:q:{queue}:0:new
-- KEYS[21]     P:q:{queue}:takes   how many jobs the queue has handed out
-- KEYS[22]     P:completions       (optional, with ARGV[4])
-- ARGV[1]      consumer group of the queue streams ("workers")
-- ARGV[2]      the consumer's name
-- ARGV[3]      most jobs to take (the consumer's free slots), at least 1
-- ARGV[4]      (optional) the backlog limit: take no fresh job while the jobs this
--              consumer was handed and that are not yet acknowledged, less the ones it
--              is running (ARGV[5]), plus the records on P:completions, are this many
--              or more. The engine's own workers pass it: those jobs are finished
--              reports the engine has not applied yet, so starting new flows then only
--              lengthens the wait of the flows already started. Absent or 0: no limit.
-- ARGV[5]      (with ARGV[4]) how many jobs the consumer is running now
-- Returns {jobs, wait}, and {jobs, wait, held} when ARGV[4] is given.
--   jobs   a flat array of triples: lane index (0..19, the position of the entry's
--          stream in KEYS), entry id, and the entry's `envelope` field (false when
--          the entry has none). Each entry is now pending on the consumer, exactly as
--          after XREADGROUP ... >.
--   wait   empty when a job was taken. When none was, one id per lane: block on
--          `XREAD BLOCK <ms> STREAMS <the 20 lanes> <the 20 ids>`, which returns as
--          soon as an entry newer than what this call saw is added to any lane, and
--          then call take.lua again. (XREAD does not consume: the entry goes to
--          whoever takes it first.)
--   held   1 when a fresh job was left because of the backlog limit (ARGV[4]), else
--          0: nothing new may arrive when the backlog clears, so wait briefly only.
--
-- Order: the first lane (in KEYS order) that has an entry no consumer has read
-- yet, oldest entry first. So a higher priority goes first and, within a priority,
-- jobs of flows that have started go before the first jobs of flows that have not.
-- Share turns keep lower priorities from starving: every 10th job the queue hands out
-- is offered first to one priority in rotation (0, 1, ..., 9, 0, ...), in its
-- continuation lane then its fresh lane; when that priority has nothing ready, the
-- turn falls back to the usual order. A priority with ready jobs therefore gets at
-- least one job in every 100 the queue hands out, whatever waits above it.

local LANES = 20
local SHARE_EVERY = 10
local group = ARGV[1]
local consumer = ARGV[2]
local want = tonumber(ARGV[3]) or 1
if want < 1 then
  want = 1
end

local turn = tonumber(redis.call('GET', KEYS[LANES + 1]) or '0') or 0
local backlog_limit = tonumber(ARGV[4] or '0') or 0
local running = tonumber(ARGV[5] or '0') or 0
-- How many fresh jobs the backlog limit still lets this call take; computed when a
-- fresh lane's turn first comes.
local fresh_room = nil
local held = 0

-- Lanes known to hold nothing new: an empty (or missing) stream, or one whose read
-- came back short (XLEN counts running entries too). Looked at only when a lane's
-- turn comes, so a take served by the first lanes does not touch the others.
local exhausted = {}

-- Reads up to n new entries of lane j for the consumer.
local function read(j, n)
  local stream = KEYS[j + 1]
  if redis.call('XLEN', stream) == 0 then
    exhausted[j] = true
    return {}
  end
  local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
    'STREAMS', stream, '>')
  if not ok then
    -- NOGROUP: a stream without its group (restored from an old snapshot). Create it
    -- from the start so that no entry stays invisible, and read again.
    redis.pcall('XGROUP', 'CREATE', stream, group, '0')
    ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
      'STREAMS', stream, '>')
    if not ok then
      exhausted[j] = true
      return {}
    end
  end
  local entries = {}
  if reply and reply[1] then
    entries = reply[1][2]
  end
  if #entries < n then
    exhausted[j] = true
  end
  return entries
end

local jobs = {}
local taken = 0

-- The consumer's backlog: its unacknowledged jobs (every lane's pending entries)
-- less those it runs or took in this call, plus the completion records not yet
-- applied.
local function backlog()
  local pending = 0
  for j = 0, LANES - 1 do
    if redis.call('XLEN', KEYS[j + 1]) > 0 then
      local ok, summary = pcall(redis.call, 'XPENDING', KEYS[j + 1], group)
      if ok and type(summary) == 'table' and type(summary[4]) == 'table' then
        for _, c in ipairs(summary[4]) do
          if c[1] == consumer then
            pending = pending + (tonumber(c[2]) or 0)
          end
        end
      end
    end
  end
  local records = 0
  if KEYS[LANES + 2] then
    records = redis.call('XLEN', KEYS[LANES + 2])
  end
  return pending - running - taken + records
end

-- How many entries of lane j this call may read, at most n.
local function allowed(j, n)
  if backlog_limit <= 0 or j % 2 == 0 then
    return n
  end
  -- An empty fresh lane holds nothing back: the backlog (20 lanes' counts) is
  -- weighed only when there may be a new flow to start.
  if redis.call('XLEN', KEYS[j + 1]) == 0 then
    exhausted[j] = true
    return 0
  end
  if fresh_room == nil then
    fresh_room = math.max(0, backlog_limit - backlog())
  end
  if fresh_room < n then
    held = 1
  end
  return math.min(n, fresh_room)
end

local function keep(j, entries)
  if j % 2 == 1 and fresh_room ~= nil then
    fresh_room = fresh_room - #entries
  end
  for _, entry in ipairs(entries) do
    local envelope = false
    local fields = entry[2]
    if type(fields) == 'table' then
      for f = 1, #fields, 2 do
        if fields[f] == 'envelope' then
          envelope = fields[f + 1]
        end
      end
    end
    jobs[#jobs + 1] = j
    jobs[#jobs + 1] = entry[1]
    jobs[#jobs + 1] = envelope
  end
  taken = taken + #entries
  turn = turn + #entries
end

while taken < want do
  local next_turn = turn + 1
  local got = false
  if next_turn % SHARE_EVERY == 0 then
    -- A share turn: one job, offered first to the priority whose turn it is.
    local priority = math.floor(next_turn / SHARE_EVERY) % 10
    for _, j in ipairs({ (9 - priority) * 2, (9 - priority) * 2 + 1 }) do
      if not got and not exhausted[j] and allowed(j, 1) > 0 then
        local entries = read(j, 1)
        if #entries > 0 then
          keep(j, entries)
          got = true
        end
      end
    end
  end
  if not got then
    -- The usual order. Read as many from the best lane as fit before the next share
    -- turn (or the first one, when this very turn was a share turn that fell back).
    local room = SHARE_EVERY - (next_turn % SHARE_EVERY)
    if next_turn % SHARE_EVERY == 0 then
      room = 1
    end
    local n = math.min(want - taken, room)
    for j = 0, LANES - 1 do
      local m = n
      if not got and not exhausted[j] then
        m = allowed(j, n)
      end
      if not got and not exhausted[j] and m > 0 then
        local entries = read(j, m)
        if #entries > 0 then
          keep(j, entries)
          got = true
        end
      end
    end
  end
  if not got then
    break
  end
end

if taken > 0 then
  redis.call('SET', KEYS[LANES + 1], turn)
  if backlog_limit > 0 then
    return { jobs, {}, held }
  end
  return { jobs, {} }
end

local wait = {}
for j = 0, LANES - 1 do
  local last = redis.call('XREVRANGE', KEYS[j + 1], '+', '-', 'COUNT', 1)
  if last[1] then
    wait[j + 1] = last[1][1]
  else
    wait[j + 1] = '0-0'
  end
end
if backlog_limit > 0 then
  return { jobs, wait, held }
end
return { jobs, wait }
