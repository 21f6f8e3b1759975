"""Stored chat completions: the background writer and the queries behind the endpoints."""
