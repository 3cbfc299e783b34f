"""Feed parsing speed: parse_feed (feedparser, then episode keys) on a generated feed.

Also times feedparser alone, to show what our per-entry work adds. Parsing is single-threaded
and CPU-bound, so CPU seconds (process time) are also given: they hold when other processes
share the cores, where wall-clock seconds do not.

.venv/bin/python bench/feed.py [--entries 800] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import feedparser  # noqa: E402

from twiml_assets.demo.feed_server import catalogue_entries, render_rss  # noqa: E402
from twiml_assets.feed.source import parse_feed  # noqa: E402


def median_seconds(fn, data: bytes, repeats: int, clock=time.perf_counter) -> float:  # noqa: ANN001
    fn(data)  # warm-up
    times = []
    for _ in range(repeats):
        started = clock()
        fn(data)
        times.append(clock() - started)
    return statistics.median(times)


def feedparser_only(data: bytes) -> object:
    return feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = render_rss(catalogue_entries(args.entries), "https://cdn.example.com")
    total = median_seconds(parse_feed, data, args.repeats)
    cpu = median_seconds(parse_feed, data, args.repeats, time.process_time)
    library = median_seconds(feedparser_only, data, args.repeats, time.process_time)
    print(f"entries                 {args.entries}")
    print(f"feed_bytes              {len(data)}")
    print(f"parse_feed_s            {total:.4f}")
    print(f"parse_feed_cpu_s        {cpu:.4f}")
    print(f"feedparser_only_cpu_s   {library:.4f}")


if __name__ == "__main__":
    main()
