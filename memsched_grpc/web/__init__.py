"""The live web dashboard: a read-only HTTP view of what the scheduler does, pushed to the page as it happens.

Only the server process imports this package; workers never do (they import neither grpc nor http).
"""

from memsched_grpc.web.server import Authorize, DashboardServer, authorize_with

__all__ = ["Authorize", "DashboardServer", "authorize_with"]
