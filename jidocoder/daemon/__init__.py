"""The daemon: processes and plumbing around the foundations."""
