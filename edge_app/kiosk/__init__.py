"""The store kiosk: capture and recognition loops, teaching, construction from the config file, `shelfsight kiosk`.

`updates/` is the kiosk's side of sync (worker, persistent state, model + catalog releases).
"""
