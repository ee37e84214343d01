"""Many messages in one space, back to back: total time with warm containers vs without.

    .venv/bin/python bench/back_to_back.py [--messages 40] [--block 20]
                                           [--first-token-delay 0.3] [--tokens-per-second 50]
                                           [--words 20]

The same two real `mercury run` sites as bench/first_response.py (the real agent image,
a fake model server each, paced alike; "cold" with `container.warm.enabled: false`,
"warm" with the defaults). Each site gets `--messages` messages in one web space, each
posted as soon as the previous one's final reply is on the web chat's event stream: a
user (or a script) who answers at once, so a warm container has only the previous run's
duration to get ready, where bench/first_response.py gives it all the time it needs.

To spread machine drift over both, the sites take turns in blocks of `--block` messages
(cold block, warm block, ...). Each block starts with one unmeasured message, so that every
measured warm message comes right after a reply, as in a long back-to-back series, and not
after the other site's block (when its container had all the time it needed). Prints the
total time of the measured messages per site, their ratio, the per-message p50 and p90,
and how many warm messages were handed to a waiting container; no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_response import (
    Site,
    build_image,
    cold_and_warm_sites,
    handovers,
    line,
    one_message,
)
from runner_latency import base_image


def block(site: Site, reply: str, count: int, start: int) -> tuple[float, int]:
    """One unmeasured message, then `count` measured ones back to back: their seconds,
    and how many of them Mercury's log says were handed to a waiting container."""
    one_message(site, reply, f"lead-in {start}", record=False)
    before = handovers(site.mercury)
    t0 = time.monotonic()
    for i in range(count):
        one_message(site, reply, str(start + i))
    elapsed = time.monotonic() - t0
    return elapsed, handovers(site.mercury) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40, help="per site (default 40)")
    parser.add_argument("--block", type=int, default=20, help="messages per turn (default 20)")
    parser.add_argument("--first-token-delay", type=float, default=0.3, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0, metavar="RATE")
    parser.add_argument("--words", type=int, default=20, help="words in each reply")
    parser.add_argument("--base", default=None, help="base image for the agent image")
    args = parser.parse_args()

    client = docker.from_env()
    build_image(client, base_image(args.base))
    reply = " ".join(f"word{k}" for k in range(args.words))
    model_time = args.first_token_delay + (args.words - 1) / args.tokens_per_second
    totals = {"cold": 0.0, "warm": 0.0}
    handed = {"cold": 0, "warm": 0}
    started = time.monotonic()
    with cold_and_warm_sites(args, reply, stream=True) as (cold, warm):
        done = 0
        while done < args.messages:
            count = min(args.block, args.messages - done)
            for site in (cold, warm):
                seconds, count_handed = block(site, reply, count, done)
                totals[site.name] += seconds
                handed[site.name] += count_handed
            done += count

    n = args.messages
    print(
        f"{n} measured messages per site, back to back in one space, in turns of "
        f"{args.block} (each turn after one unmeasured message); model: first token "
        f"{args.first_token_delay * 1000:.0f} ms, {args.tokens_per_second:g} tokens/s, "
        f"{args.words} words (whole answer {model_time * 1000:.0f} ms); "
        f"bench wall time {time.monotonic() - started:.0f} s"
    )
    for site in (cold, warm):
        s = site.series
        print(
            f"{site.name}: total {totals[site.name]:7.1f} s  "
            f"({totals[site.name] / n * 1000:.0f} ms a message)"
        )
        print(line(f"{site.name}: message -> first model request", s.request))
        if s.handover:
            print(line(f"{site.name}:   message -> hand-over", s.handover))
            print(line(f"{site.name}:   hand-over -> first model request", s.handover_to_request))
        print(line(f"{site.name}: message -> reply", s.reply))
    print(f"ratio total cold / warm                       : {totals['cold'] / totals['warm']:.2f}x")
    print(
        f"ratio reply p50 cold / warm                   : "
        f"{statistics.median(cold.series.reply) / statistics.median(warm.series.reply):.2f}x"
    )
    print(
        f"measured messages handed to a waiting container: cold {handed['cold']}/{n}, "
        f"warm {handed['warm']}/{n}"
    )


if __name__ == "__main__":
    main()
