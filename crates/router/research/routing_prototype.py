#!/usr/bin/env python3
"""Prototype of tollgate's routing score, scored the way `tollgate eval routing` must score it.

The router issue (#7) asks for APGR >= 0.62 on both development files from a cold start, with
signals that generalise. This prototype is where the signals were chosen before the Rust router
exists; the Rust implementation must reproduce these figures on the same rows and seeds.

Score of a prompt = prior + gamma * casebank adjustment, where
- prior: a fixed complexity score (no learning, no data): log(characters)
  + 0.5 * log(1 + relational/quantitative cues) + 0.5 * [a negation such as NOT/EXCEPT],
  standardised with the running mean and deviation of the prompts seen so far;
- casebank adjustment: from the K=32 nearest past cases (cosine over hashed word 1-2-grams, the
  casebank's built-in embedder), the similarity-weighted mean of (strong correct - weak correct)
  minus its running base rate, shrunk by evidence / (evidence + 8), divided by 0.1.

Prequential: rows shuffled with the seed; each prompt is scored from earlier rows only, then its
outcome becomes a case. The `subject` field is never read.

    python3 crates/router/research/routing_prototype.py --data ../shared/routing-eval/gsm8k.jsonl
"""
import argparse
import json
import math
import random
import re
import zlib

import numpy as np

RELATIONAL = re.compile(
    r"\b(more|less|fewer|longer|shorter|older|younger|larger|smaller) than\b"
    r"|\b(times|twice|double|triple|half|third|quarter|thrice)\b|\d+/\d+",
    re.I,
)
NEGATION = re.compile(r"\b(not|except|least|false|incorrect)\b", re.I)
EMBED_DIM = 1024


def prior_score(prompt):
    cues = len(RELATIONAL.findall(prompt))
    negation = 1.0 if NEGATION.search(prompt) else 0.0
    return math.log(max(len(prompt), 1)) + 0.5 * math.log1p(cues) + 0.5 * negation


def embed(prompt):
    tokens = re.findall(r"[a-z]+|\d+", prompt.lower())
    v = np.zeros(EMBED_DIM)
    for t in tokens:
        v[zlib.crc32(b"u" + t.encode()) % EMBED_DIM] += 1
    for a, b in zip(tokens, tokens[1:]):
        v[zlib.crc32(b"b" + (a + " " + b).encode()) % EMBED_DIM] += 1
    v = np.sqrt(v)
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def apgr(scores, weak, strong):
    """Area under PGR(c) for c = share of strong calls, routing the highest scores to strong."""
    scores, weak, strong = (np.asarray(a, float) for a in (scores, weak, strong))
    n = len(scores)
    gain = (strong - weak)[np.argsort(-scores, kind="stable")]
    acc = weak.mean() + np.concatenate([[0], np.cumsum(gain)]) / n
    pgr = (acc - weak.mean()) / (strong.mean() - weak.mean())
    share = np.arange(n + 1) / n

    def cpt(x):
        i = int(np.argmax(pgr >= x))
        return share[i] if pgr[i] >= x else 1.0

    return float(np.trapezoid(pgr, share)), cpt(0.5), cpt(0.8)


def evaluate(rows, seed, gamma=1.0, k=32, shrink=8.0):
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    embeddings = np.array([embed(r["prompt"]) for r in rows])
    priors = np.array([prior_score(r["prompt"]) for r in rows])
    gains = np.array([float(r["strong_correct"]) - float(r["weak_correct"]) for r in rows])
    scores = []
    for i in range(len(rows)):
        seen = priors[: i + 1]
        z = (priors[i] - seen.mean()) / (seen.std() + 1e-6) if i > 1 else 0.0
        adjustment = 0.0
        if i > 0:
            sims = embeddings[:i] @ embeddings[i]
            top = np.argpartition(-sims, min(k, i) - 1)[: min(k, i)]
            weights = np.clip(sims[top], 0, None)
            evidence = weights.sum()
            if evidence > 0:
                estimate = (weights * gains[top]).sum() / evidence
                adjustment = (estimate - gains[:i].mean()) * evidence / (evidence + shrink)
        scores.append(z + gamma * adjustment / 0.1)
    return apgr(scores, [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--gamma", type=float, default=1.0, help="weight of the casebank adjustment; 0 = prior only")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.data)]
    results = [evaluate(rows, seed, gamma=args.gamma) for seed in range(args.seeds)]
    for seed, (area, cpt50, cpt80) in enumerate(results):
        print(f"seed {seed}: APGR {area:.3f}  CPT(50%) {cpt50:.3f}  CPT(80%) {cpt80:.3f}")
    print(f"mean APGR over {args.seeds} seeds: {np.mean([r[0] for r in results]):.3f}")


if __name__ == "__main__":
    main()
