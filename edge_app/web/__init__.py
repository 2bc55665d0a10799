"""The kiosk's local web page and HTTP API (Flask); no internet assets."""
