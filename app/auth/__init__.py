"""Identity: accounts, roles, tokens, API keys and the role x endpoint policy."""
