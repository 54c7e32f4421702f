#!/usr/bin/env python3
"""Picks the few inputs of a long fuzz run worth committing to a seed corpus.

libFuzzer's `-merge=1` keeps every input that adds any coverage, which after a few
minutes is hundreds of files. This reads the control file of such a merge and picks,
greedily, the inputs that add the most new coverage edges over the committed corpus,
until N are picked or none adds anything. See docs/FUZZING.md.

    mkdir /tmp/merged && cp corpus/flow_spec/* /tmp/merged/
    RUSTC_BOOTSTRAP=1 cargo fuzz run flow_spec /tmp/merged /tmp/fuzz-work/flow_spec -- \
        -merge=1 -use_counters=0 -merge_control_file=/tmp/mcf.txt -max_len=65536
    python3 pick_corpus.py /tmp/mcf.txt 90 | xargs -I{} cp {} corpus/flow_spec/
"""

import os
import sys


def main():
    control, budget = sys.argv[1], int(sys.argv[2])
    lines = open(control).read().split("\n")
    nfiles, nfirst = int(lines[0]), int(lines[1])
    files = lines[2 : 2 + nfiles]
    cov = {}
    for line in lines[2 + nfiles :]:
        parts = line.split()
        if parts and parts[0] == "COV":
            cov[int(parts[1])] = set(map(int, parts[2:]))
    # The first directory of the merge is the committed corpus: what it covers is known.
    covered = set()
    for i in range(nfirst):
        covered |= cov.get(i, set())
    candidates = {i: cov.get(i, set()) for i in range(nfirst, nfiles)}
    picked = 0
    while candidates and picked < budget:
        best = max(
            candidates,
            key=lambda i: (len(candidates[i] - covered), -os.path.getsize(files[i])),
        )
        gain = len(candidates.pop(best) - covered)
        if gain == 0:
            break
        covered |= cov[best]
        picked += 1
        print(files[best])
        print(f"+{gain} edges", file=sys.stderr)


if __name__ == "__main__":
    main()
