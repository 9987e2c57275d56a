"""Bundled demo upstreams (users and orders) for `make run` and docker-compose.

    python -m kairos.demo [--host 127.0.0.1] [--users-port 3001] [--orders-port 3002] [--only users|orders]
"""

from kairos.demo.services import build_orders_app, build_users_app, serve

__all__ = ["build_users_app", "build_orders_app", "serve"]
