"""Notifications that reach a person: rules and on-call rotas (data), the outbox, channels, remote acknowledgement."""
