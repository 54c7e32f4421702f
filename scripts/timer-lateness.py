#!/usr/bin/env python3
"""How late durable timers fire: creates N flows, each one wait node with `until`
spread evenly over SPREAD_MS, lets them hibernate, then samples 1,000 of them and
prints how late (finishedAt - due, ms) their timers fired.

    python3 scripts/timer-lateness.py http://127.0.0.1:7700 100000 10000

Run it against a server with `--queues "" --hibernate-after 2s` (docs/PERFORMANCE.md)."""
import json, time, random, sys, urllib.request, concurrent.futures as cf
B = sys.argv[1]; N = int(sys.argv[2]); SPREAD_MS = int(sys.argv[3])
def post(path, body):
    r = urllib.request.Request(B + path, data=json.dumps(body).encode(), method="POST",
                               headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=60))
def get(path):
    return json.load(urllib.request.urlopen(B + path, timeout=60))
start = int(time.time() * 1000)
lead = 20000 + N // 2  # ms: time to create them all and let them hibernate
def make(i):
    due = start + lead + (i * SPREAD_MS) // N
    return post("/flows", {"name": "timer", "nodes": [{"name": "t", "wait": {"until": due}}]})["flowId"], due
t0 = time.time()
with cf.ThreadPoolExecutor(32) as ex:
    flows = list(ex.map(make, range(N)))
print(f"created {N} in {time.time()-t0:.1f}s; first due in {(start+lead-time.time()*1000)/1000:.1f}s", flush=True)
last_due = max(d for _, d in flows)
time.sleep(max(0, (last_due - time.time() * 1000) / 1000) + 5)
sample = random.sample(flows, min(1000, N))
late = []
pending = 0
for fid, due in sample:
    v = get(f"/flows/{fid}")
    n = v["nodes"][0]
    if n["status"] != "completed":
        pending += 1
        continue
    late.append(n["finishedAt"] - due)
late.sort()
q = lambda p: late[min(len(late) - 1, int(p * len(late)))]
print(json.dumps({"flows": N, "spread_ms": SPREAD_MS, "sampled": len(sample), "not_fired": pending,
                  "late_ms_p50": q(0.5), "late_ms_p99": q(0.99), "late_ms_max": late[-1], "early": sum(1 for x in late if x < 0)}))
