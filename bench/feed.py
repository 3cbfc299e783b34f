"""Feed parsing speed: our ElementTree parser vs feedparser on one generated 800-entry feed.

.venv/bin/python bench/feed.py [--entries 800] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import feedparser  # noqa: E402

from twiml_assets.demo_feed import catalogue_entries, render_rss  # noqa: E402
from twiml_assets.feed import parse_feed  # noqa: E402


def median_seconds(fn, data: bytes, repeats: int) -> float:  # noqa: ANN001
    fn(data)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = render_rss(catalogue_entries(args.entries), "https://cdn.example.com")
    ours = median_seconds(parse_feed, data, args.repeats)
    reference = median_seconds(feedparser.parse, data, args.repeats)
    print(f"entries                 {args.entries}")
    print(f"feed_bytes              {len(data)}")
    print(f"parse_feed_s            {ours:.4f}")
    print(f"feedparser_s            {reference:.4f}")
    print(f"parse_feed/feedparser   {ours / reference:.3f}")


if __name__ == "__main__":
    main()
