#!/usr/bin/env python3
"""nDCG@10 of hybrid fusion settings, replayed offline from `semantic-tools eval --results` runs.

Usage: fusion_sweep.py RESULTS_DIR SYSTEM QRELS_TSV

RESULTS_DIR holds eval's runs: SYSTEM.run (the semantic side, e.g. all_minilm_l6_v2) and
bm25.run. Only the queries judged in QRELS_TSV count, so the settings can be chosen on a
training split. Each side's run is its top 100 (eval's depth), so this replays
semantic_search's fusion over 100-deep lists; semantic_search itself fuses lists of 5 x k
rows, so confirm a choice with `eval --fusion ... --semantic-weight ... --lexical-weight ...`.
"""
import collections
import csv
import math
import sys


def read_run(path):
    ranking = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            query, _, doc, _, score, _ = line.split()
            ranking[query].append((doc, float(score)))
    return ranking


def read_qrels(path):
    judged = collections.defaultdict(dict)
    with open(path) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                judged[row["query-id"]][row["corpus-id"]] = int(row["score"])
    return judged


def ndcg_at_10(ranked, grades):
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(grades.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def rrf(semantic, lexical, semantic_weight, rrf_k):
    fused = collections.defaultdict(float)
    for weight, side in ((semantic_weight, semantic), (1.0, lexical)):
        for rank, (doc, _) in enumerate(side, start=1):
            fused[doc] += weight / (rrf_k + rank)
    return fused


def convex(semantic, lexical, semantic_weight):
    fused = collections.defaultdict(float)
    for weight, side in ((semantic_weight, semantic), (1.0 - semantic_weight, lexical)):
        if not side:
            continue
        hi, lo = side[0][1], side[-1][1]
        for doc, score in side:
            fused[doc] += weight * ((score - lo) / (hi - lo) if hi > lo else 1.0)
    return fused


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    results, system, qrels = sys.argv[1:]
    semantic = read_run(f"{results}/{system}.run")
    lexical = read_run(f"{results}/bm25.run")
    judged = read_qrels(qrels)

    def mean_ndcg(fuse):
        total = 0.0
        for query, grades in judged.items():
            scores = fuse(semantic.get(query, []), lexical.get(query, []))
            # Ties break by document id, as semantic_search breaks them by row.
            ranked = sorted(scores, key=lambda d: (-scores[d], d))
            total += ndcg_at_10(ranked, grades)
        return total / len(judged)

    print(f"{len(judged)} queries; semantic alone, bm25 alone:",
          f"{mean_ndcg(lambda s, l: {d: -i for i, (d, _) in enumerate(s)}):.4f}",
          f"{mean_ndcg(lambda s, l: {d: -i for i, (d, _) in enumerate(l)}):.4f}")
    for rrf_k in (10, 30, 60, 100):
        row = [f"{w}: {mean_ndcg(lambda s, l: rrf(s, l, w, rrf_k)):.4f}"
               for w in (0.5, 0.7, 1.0, 1.4, 2.0)]
        print(f"rrf, rrf_k {rrf_k}, semantic weight (lexical 1) " + ", ".join(row))
    row = [f"{w}: {mean_ndcg(lambda s, l: convex(s, l, w)):.4f}"
           for w in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)]
    print("convex, semantic weight (lexical 1 - it) " + ", ".join(row))


if __name__ == "__main__":
    main()
