"""Runs `cutover ARGS...` on the event loop named first: `asyncio` or `uvloop` (bench/probe's daemon).

    python bench/probe_launch.py uvloop run --config cutover.yml

The daemon itself is untouched: uvloop's policy is installed before `asyncio.run` creates the
loop, which is what an optional uvloop dependency would do in exporter/cli.py.
"""

from __future__ import annotations

import sys


def main() -> int:
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "uvloop":
        import uvloop

        uvloop.install()
    elif kind != "asyncio":
        print(f"probe_launch: unknown loop {kind!r} (asyncio or uvloop)", file=sys.stderr)
        return 2
    from exporter.cli import main as cutover

    return cutover(args)


if __name__ == "__main__":
    sys.exit(main())
