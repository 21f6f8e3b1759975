"""Wire schemas: Pydantic models mirroring the official OpenAI spec (shared/openai/openapi.yaml)."""
