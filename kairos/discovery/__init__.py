"""DNS service discovery: backends re-resolved in the background (docs/discovery.md)."""
