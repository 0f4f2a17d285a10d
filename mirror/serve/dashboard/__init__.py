"""The dashboard ``serve`` shows at ``/``: projects, a project's runs table, a run's page with
charts, compare and status. Server-rendered HTML with a little JavaScript (uPlot for the
charts), every asset shipped in the wheel."""

from mirror.serve.dashboard.handler import Dashboard

__all__ = ["Dashboard"]
