"""The HQ <-> store sync protocol both sides speak (see docs/sync.md).

Signed envelopes, the codec for deltas, snapshots and releases, the JSON messages, topic names,
chunking and the content digest; `transport/` carries them (the `MessageBus` interface, the paho
adapter, an in-memory bus for rule tests). HQ's side is `shelfsight.catalog.hq`, the kiosk's
`shelfsight.edge_app.kiosk.updates`. Nothing is imported here, so reading a config does not
load paho or cryptography.
"""
