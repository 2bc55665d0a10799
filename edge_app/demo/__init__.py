"""The built-in demo: rendered sample products and a kiosk clip played through the pipeline (`shelfsight demo`)."""
