"""The ``openai`` provider: one model served by a fleet of OpenAI-compatible deployments,
routed, health-checked and relayed as bytes."""
