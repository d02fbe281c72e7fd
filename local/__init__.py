"""The embedded local stack: emulators, gateway, poller and provisioning from template.yaml."""
