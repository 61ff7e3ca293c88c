#!/usr/bin/env python3
"""max_diff.py A B: both files hold "position<TAB>token<TAB>logprob" lines (the output of
`seqmamba score` and of logprobs.c). Prints the number of positions compared and the largest
absolute difference of the log-probabilities; exits 1 if positions or tokens disagree."""
import sys


def read(path):
    rows = []
    with open(path) as f:
        for line in f:
            pos, token, logprob = line.split()
            rows.append((int(pos), int(token), float(logprob)))
    return rows


a, b = read(sys.argv[1]), read(sys.argv[2])
if [r[:2] for r in a] != [r[:2] for r in b]:
    sys.exit(f"{sys.argv[1]} and {sys.argv[2]} score different positions or tokens")
diffs = [abs(x[2] - y[2]) for x, y in zip(a, b)]
worst = max(range(len(diffs)), key=diffs.__getitem__)
mean_abs = sum(abs(x[2]) for x in a) / len(a)
print(f"{len(a)} positions, max |dlogprob| {diffs[worst]:.3g} at position {a[worst][0]}, "
      f"mean |dlogprob| {sum(diffs) / len(diffs):.3g}, mean |logprob| {mean_abs:.3g}")
