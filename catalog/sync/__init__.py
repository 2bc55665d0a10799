"""HQ -> stores sync of catalog and model over MQTT (see docs/sync.md).

Kiosk side: `catalog.sync.config.SyncConfig` (the `sync:` config section),
`catalog.sync.kiosk.KioskSync`, `catalog.sync.releases.current_release`.
HQ side: `catalog.sync.publisher.HqPublisher` / `HqServer`, `shelfsight hq ...`.
Nothing is imported here, so reading the config does not load paho or cryptography.
"""
