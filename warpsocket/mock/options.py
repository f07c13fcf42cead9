"""``twistd warpsocket --mock FILE``: the scenario and the service from the options (cli.py)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage
from twisted.web.server import Site

from warpsocket.mock.scenario import Scenario, ScenarioError, load_scenario
from warpsocket.mock.server import MockService
from warpsocket.server.hub import Hub


def check_mock_options(options: Any) -> Scenario:
    """The scenario of ``--mock``, or a usage error naming the bad place.

    A restart replaces the in-memory hub, so the mock serves alone: no
    cluster backend, no separate metrics port."""
    if options["redis"] is not None or options["redis_sentinels"]:
        raise usage.UsageError("--mock serves in memory: drop --redis/--redis-sentinel")
    if options["metrics-endpoint"] is not None:
        raise usage.UsageError("--mock serves /metrics on its own port: drop --metrics-endpoint")
    try:
        return load_scenario(options["mock"])
    except ScenarioError as exc:
        raise usage.UsageError(f"--mock: {exc}") from None


def mock_service(options: Any) -> IService:
    """The mock's service, with the parts of the site the options ask for: the
    HTTP API, the inspector and JSON log lines (as a plain server has them)."""
    from warpsocket.server.observe.logs import log_observer, use_for_twistd
    from warpsocket.server.web import add_http_api, add_inspector

    keys = options.get("api_keys")
    inspect_key = options.get("inspect_key")

    def setup_site(site: Site, hub: Hub) -> None:
        if keys:
            rate = options["api-rate"] or None
            add_http_api(site, hub, keys, rate=rate, burst=options["api-burst"])
        if inspect_key is not None:
            add_inspector(site, hub, inspect_key)

    service = MockService(
        options["mock_scenario"],
        options["endpoints"],
        options=options["hub_options"],
        path=options["path"],
        app=options.get("app_callable"),
        setup_site=setup_site,
    )
    if options["log-format"] == "json":
        use_for_twistd(service, log_observer("json", sys.stdout, bool(options["debug"])))
    return service
