"""Who may call the API: API keys, the master key, and the open mode for loopback use."""
