"""Calling Confluence: the client, the CQL builder, and where a token may be sent."""
