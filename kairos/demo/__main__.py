"""python -m kairos.demo: run the demo users, orders and chat (WebSocket echo) services."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kairos.demo.services import BUILDERS, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kairos.demo", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--users-port", type=int, default=3001)
    p.add_argument("--orders-port", type=int, default=3002)
    p.add_argument("--chat-port", type=int, default=3003)
    p.add_argument("--only", choices=sorted(BUILDERS), action="append",
                   help="run only this service (repeatable); default: all")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, {"users": args.users_port, "orders": args.orders_port, "chat": args.chat_port},
                      only=args.only, log_level=args.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
