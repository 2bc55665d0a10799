"""HQ's web console: the fleet, enrollments waiting for approval, and the master catalog's products.

Flask and static files from this package, no internet assets; `shelfsight hq console` serves it.
"""
