-- check.lua: compare the jobs a flow's snapshot says are queued or running with what
-- Redis holds for them (read-only). Used by the engine's reconciliation pass.
--
-- KEYS[1]      P:flow:{flow_id}:jobs   the flow's jobs hash
-- KEYS[2k]     P:q:{queue}:{lane}      the lane stream job k belongs in (k = 1..n)
-- KEYS[2k+1]   P:q:{queue}:delayed     delayed set of job k
-- ARGV[k]      field of job k: "{node}:{attempt}"
-- Returns one code per job:
--   0  present: the field names a stream entry that exists, or a delayed member
--      that exists
--   1  the field is missing (Redis lost the flow's hash, or never got the job)
--   2  the field says queued but its stream entry is gone (or is on another lane
--      than the one it belongs in: a field written before lanes existed)
--   3  the field says delayed but its member is gone
--   4  the field says done: a worker reported the job, but the snapshot does not
--      hold the outcome yet (in flight, or its completion record was lost)
--   5  the job's place under its limits is gone: a queued job of a concurrency key
--      missing from the key's running set, or a job waiting for a slot or a token
--      missing from the key's waiting list

local hash = KEYS[1]
local P = string.match(hash, '^(.*):flow:[^:]*:jobs$')
local flow = string.match(hash, ':flow:(.*):jobs$')
local out = {}

for k = 1, #ARGV do
  local stream = KEYS[2 * k]
  local delayed = KEYS[2 * k + 1]
  local value = redis.call('HGET', hash, ARGV[k])
  local code = 0
  if not value then
    code = 1
  elseif value == 'done' then
    code = 4
  else
    local ok, state = pcall(cjson.decode, value)
    if not ok or type(state) ~= 'table' then
      code = 1
    elseif state.s == 'queued' then
      if type(state.e) ~= 'string' or state.l == nil or #redis.call('XRANGE', stream, state.e, state.e) == 0 then
        code = 2
      elseif state.ck and not redis.call('ZSCORE', P .. ':ck:' .. state.ck .. ':run', flow .. ':' .. ARGV[k]) then
        code = 5
      end
    elseif state.s == 'held' then
      if not redis.call('ZSCORE', P .. ':ck:' .. tostring(state.ck) .. ':wait', hash .. '|' .. ARGV[k]) then
        code = 5
      end
    elseif state.s == 'fheld' then
      if not redis.call('ZSCORE', P .. ':fk:' .. tostring(state.fk) .. ':wait', flow) then
        code = 5
      end
    elseif state.s == 'rate' then
      if not redis.call('ZSCORE', P .. ':rl:' .. tostring(state.rk) .. ':wait', hash .. '|' .. ARGV[k]) then
        code = 5
      end
    elseif state.s == 'delayed' then
      if type(state.m) ~= 'string' or not redis.call('ZSCORE', delayed, state.m) then
        code = 3
      end
    end
  end
  out[k] = code
end

return out
