"""The kiosk's local web page and HTTP API (Flask); no internet assets."""

from edge_app.web.app import WebServer, create_app

__all__ = ["WebServer", "create_app"]
