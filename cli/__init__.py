"""Batch command line client: restore files or folders through the gateway's jobs API."""
