"""What a node decides, written once: attempts, the poller, heartbeat, maintenance, the registry."""
