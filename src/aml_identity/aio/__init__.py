"""Async twins of the runtime API."""
