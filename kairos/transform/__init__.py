"""Request and response transformation (issue 12): see docs/transformation.md."""
