-- cleanup.lua: remove everything Redis holds for one flow, atomically: its jobs'
-- lane entries (acknowledged first, so no consumer keeps them pending), delayed
-- members and places in waiting lists, its jobs hash; then the concurrency slots
-- and the flow slot it held go to the next waiting jobs and flows. Prefixed with
-- limits.lua, whose drop_job finds each job's keys from its field (queue, lane).
--
-- KEYS[1]   P:flow:{flow_id}:jobs
-- ARGV[1]   consumer group of the queue streams ("workers")
-- Returns the number of fields removed.

local hash = KEYS[1]
local P = string.match(hash, '^(.*):flow:[^:]*:jobs$')
local group = ARGV[1]

local all = redis.call('HGETALL', hash)
local flow_marker = redis.call('HGET', hash, ':fk')
-- The hash goes first: a slot given back below must not go to a job of this very
-- flow (admit_waiting skips jobs whose field is gone).
redis.call('DEL', hash)

local slots = {}
for j = 2, #all, 2 do
  local st = job_state(all[j - 1], all[j])
  if st then
    drop_job(P, hash, all[j - 1], st, group)
    slots[#slots + 1] = { all[j - 1], st }
  end
end
for _, slot in ipairs(slots) do
  give_slot(P, hash, slot[1], slot[2], group)
end
if flow_marker then
  release_flow(P, string.match(hash, ':flow:(.*):jobs$'), flow_marker, group)
end

return #all / 2
