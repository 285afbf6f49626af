"""The patch domain: scan hosts for updates, approve them by baseline, roll them out safely."""
