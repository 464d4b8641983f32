"""Codec speed for CallOffered on one core: encode, decode, and both (events/s).

.venv/bin/python -m bench.codec [--n 200000]
"""

from __future__ import annotations

import argparse

from bench._util import best_rate, pin_one_core
from schemas import SingleObjectCodec
from tests.samples import sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    pin_one_core()
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
    print(f"  encode          {best_rate(args.n, encode):>10,.0f} events/s")
    print(f"  decode          {best_rate(args.n, decode):>10,.0f} events/s")
    print(f"  encode+decode   {best_rate(args.n, both):>10,.0f} events/s")


if __name__ == "__main__":
    main()
