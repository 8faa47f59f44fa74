"""AWS IoT Jobs (and OTA updates on top of them) for local_iot: a sans-IO core, its control-plane API and its
MQTT adapter. See docs/ota.md."""
