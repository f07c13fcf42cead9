"""The mock server: a real WarpSocket server playing a scenario (docs/mock.md).

``warpsocket mock SCENARIO`` or ``twistd warpsocket --mock SCENARIO``;
``MockService`` from Python. ``load_scenario`` reads and checks a file.
"""

from warpsocket.mock.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from warpsocket.mock.server import MockService

__all__ = ["MockService", "Scenario", "ScenarioError", "load_scenario", "parse_scenario"]
