"""Headquarters' side of sync: the publisher and server, the enrollment inbox, the fleet's status (`shelfsight hq`)."""
