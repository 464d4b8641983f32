"""Codec speed for CallOffered on one core: encode, decode, and both (events/s).

.venv/bin/python -m bench.codec [--n 200000]
"""

from __future__ import annotations

import argparse
import os
import time

from schemas import SingleObjectCodec
from tests.samples import sample


def rate(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    best = 0.0
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {0})  # one core
    except (AttributeError, OSError):
        pass
    codec = SingleObjectCodec()
    record = sample("CallOffered")
    data = codec.encode("CallOffered", record)
    enc, dec = codec.encode, codec.decode

    def encode(n: int) -> None:
        for _ in range(n):
            enc("CallOffered", record)

    def decode(n: int) -> None:
        for _ in range(n):
            dec(data)

    def both(n: int) -> None:
        for _ in range(n):
            dec(enc("CallOffered", record))

    print(f"CallOffered, {len(data)} bytes single-object encoded, {args.n} events, 1 core")
    print(f"  encode          {rate(args.n, encode):>10,.0f} events/s")
    print(f"  decode          {rate(args.n, decode):>10,.0f} events/s")
    print(f"  encode+decode   {rate(args.n, both):>10,.0f} events/s")


if __name__ == "__main__":
    main()
