"""How sync messages travel: the `MessageBus` interface, its paho-mqtt adapter, a factory, the broker config."""
