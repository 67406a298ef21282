"""The synthetic corpus of the lexical benchmarks (bench_lexical_zipf.py, bench_tail.py,
bench_build_memory.py): 200,000 made-up words (letters only, never English stop words), drawn
with Zipf probabilities (rank r with weight 1 / r^1.1)."""
import numpy as np

VOCAB = 200_000
_letters = np.array(list("bcdfghjklmnpqrstvwxz"))


def word(i):
    out = []
    i += 1
    while i:
        out.append(_letters[i % 20])
        i //= 20
    return "q" + "".join(out) + "a"  # consonant runs ending in 'a': no stemming, no stop words


WORDS = [word(i) for i in range(VOCAB)]
WEIGHTS = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
WEIGHTS /= WEIGHTS.sum()


def documents(rng, n):
    """n documents of 10 to 90 words."""
    lengths = rng.integers(10, 91, size=n)
    draws = rng.choice(VOCAB, size=int(lengths.sum()), p=WEIGHTS)
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(WORDS[w] for w in draws[at:at + length]))
        at += length
    return out


def queries(rng, count):
    """count queries of 2 to 5 words, ranks drawn log-uniformly over the vocabulary."""
    return [" ".join(WORDS[min(VOCAB - 1, int(VOCAB ** rng.random()))] for _ in range(rng.integers(2, 6)))
            for _ in range(count)]
