"""The admin listener: a JSON API, its OpenAPI document and a web console, on its own port.

    tokens.py    bearer tokens (hashed, compared in constant time) and the failure throttle
    document.py  the config as a JSON document: route ids, redaction, ETag, change summaries
    store.py     the config file: atomic write-back and the history of versions
    control.py   what the API acts on: the live Gateway (one process) or the workers' supervisor
    stats.py     per-route request rates, error rates and latency percentiles over 1 and 5 minutes
    schemas.py   the API's pydantic models and the OpenAPI 3.1 document built from them
    api.py       the Starlette app (routes, auth, `admin`/`audit` log events)
    listener.py  running it on its own uvicorn server
    ui/          the web console (static, hand-written)
"""
