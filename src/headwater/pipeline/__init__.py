"""The only code that awaits ports: bounded queues, retries, dead-lettering, events."""
