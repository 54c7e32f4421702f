-- enqueue.lua: add the jobs of one flow, idempotently and atomically.
--
-- KEYS[1]          P:flow:{flow_id}:jobs   the flow's jobs hash
-- KEYS[2k]         P:q:{queue}:{lane}      lane stream of job k (k = 1..n)
-- KEYS[2k+1]       P:q:{queue}:delayed     delayed set of job k
-- KEYS[2n+2]       P:queues:delayed        names of queues that have delayed jobs
-- ARGV[1]          consumer group of the queue streams ("workers")
-- ARGV[6k-4]       field of job k: "{node}:{attempt}"
-- ARGV[6k-3]       queue name of job k
-- ARGV[6k-2]       due time of job k in ms since the epoch, or "0" to make it ready now
-- ARGV[6k-1]       lane index of job k (0..19, the position of its lane stream in
--                  the order workers serve the lanes)
-- ARGV[6k]         the job's limits as JSON ({"ck","cl","cs","rk","rn","rp"}, see
--                  limits.lua), or "" when it has none
-- ARGV[6k+1]       the job envelope (JSON)
-- Returns the number of jobs added; a job whose field already exists is left alone,
-- whatever its state, so re-enqueueing after a crash is a no-op.
--
-- Hash values written here (read back by ack/report/promote/cleanup):
--   {"s":"queued","q":<queue>,"l":<lane index>,"e":<stream entry id>}
--   {"s":"delayed","q":<queue>,"m":<the delayed set member, i.e. the envelope>}
-- The delayed member is kept in the hash so that cleanup can remove it exactly. A job
-- with limits goes through limits_admit (limits.lua) instead of straight to its lane,
-- and its limits are kept in its field (also while delayed, for promote.lua).

local hash = KEYS[1]
local P = string.match(hash, '^(.*):flow:[^:]*:jobs$')
local group = ARGV[1]
local njobs = (#ARGV - 1) / 6
local delayed_queues = KEYS[2 * njobs + 2]
local added = 0
local checked = {}

for k = 1, njobs do
  local stream = KEYS[2 * k]
  local field = ARGV[6 * k - 4]
  local job = {
    queue = ARGV[6 * k - 3], due = ARGV[6 * k - 2], lane = tonumber(ARGV[6 * k - 1]),
    limits = ARGV[6 * k], envelope = ARGV[6 * k + 1], delayed = KEYS[2 * k + 1],
    delayed_queues = delayed_queues,
  }

  -- The field is the job's idempotency record: once it exists the job was enqueued
  -- (and maybe already run), so nothing is added twice.
  if redis.call('HEXISTS', hash, field) == 0 then
    if not place_job(P, hash, field, job, group) then
      -- A missing stream means a new queue or a Redis that lost its data: create the
      -- group from the start of the stream so no entry is ever invisible to it.
      -- Checked once per stream per call: a batch of jobs for one queue pays one EXISTS.
      if not checked[stream] then
        if redis.call('EXISTS', stream) == 0 then
          redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
        end
        checked[stream] = true
      end
      local id = redis.call('XADD', stream, '*', 'envelope', job.envelope)
      redis.call('HSET', hash, field, cjson.encode({ s = 'queued', q = job.queue, l = job.lane, e = id }))
    end
    added = added + 1
  end
end

return added
