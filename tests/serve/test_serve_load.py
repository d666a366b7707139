"""A bounded load test: 16 concurrent clients send 200 requests in all to 4 adapters (chat and completions,
streamed and not) of one `sparta serve` on localhost. Every answer must be its run's `sparta generate` answer
and none may be lost; p50/p95 latency and throughput are reported (printed and recorded), never asserted."""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from servekit import ADAPTERS, PROMPTS, TURNS, complete

CLIENTS, REQUESTS, N = 16, 200, 8


def test_sixteen_clients_two_hundred_requests_four_adapters(server, expected, record_property):
    rng = random.Random(0)
    prompts = [*PROMPTS, TURNS]
    cases = [(rng.choice(ADAPTERS), rng.randrange(len(prompts)), rng.random() < 0.5) for _ in range(REQUESTS)]
    want = {(m, p): expected(m, prompts[p], N) for m, p, _ in cases}
    client = server.client()

    def one(case):
        model, p, stream = case
        start = time.perf_counter()
        text, usage, _ = complete(client, model, prompts[p], stream, max_tokens=N)
        return text, usage.completion_tokens, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, cases))
    wall = time.perf_counter() - start

    assert len(results) == REQUESTS
    wrong = [(c, r[0]) for c, r in zip(cases, results, strict=True) if r[0] != want[(c[0], c[1])]]
    assert not wrong, wrong[:3]
    latencies = sorted(r[2] for r in results)
    report = {
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "requests_per_s": REQUESTS / wall,
        "tokens_per_s": sum(r[1] for r in results) / wall,
    }
    for key, value in report.items():
        record_property(key, round(value, 4))
    print(" ".join(f"{k}={v:.3f}" for k, v in report.items()))
