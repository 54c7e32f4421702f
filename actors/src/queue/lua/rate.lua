-- rate.lua: release jobs that wait for a rate-limit token, at the time their
-- tokens free up. The engine runs it when the earliest key of P:rl:due falls due
-- (the reply says when that is), so a waiting job is released by a timer set for
-- its token, not found by polling.
--
-- KEYS[1]   P:rl:due
-- ARGV[1]   consumer group of the queue streams ("workers")
-- ARGV[2]   most jobs to release in this call
-- Returns {jobs released, the time (ms) the next key falls due or -1 when none}.

local P = string.sub(KEYS[1], 1, -8)
local due = KEYS[1]
local group = ARGV[1]
local budget = tonumber(ARGV[2]) or 1000
local now = clock_ms()
local released = 0

for _, rk in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, 100)) do
  local wait = P .. ':rl:' .. rk .. ':wait'
  while true do
    local first = redis.call('ZRANGE', wait, 0, 0)
    if #first == 0 then
      redis.call('ZREM', due, rk)
      break
    end
    if released >= budget then
      break
    end
    local ref = first[1]
    local hash, field, st = waiting_job(ref)
    if not st or st.s ~= 'rate' then
      -- Its flow ended or was deleted meanwhile: forget it.
      redis.call('ZREM', wait, ref)
    else
      local got, next_at = take_token(P, st, now)
      if not got then
        redis.call('ZADD', due, next_at, rk)
        break
      end
      redis.call('ZREM', wait, ref)
      count_held(P, st.q, 'r:' .. rk, -1)
      to_lane(P, hash, field, st, group)
      released = released + 1
    end
  end
end

local next_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if #next_due == 0 then
  return { released, -1 }
end
return { released, math.floor(tonumber(next_due[2])) }
