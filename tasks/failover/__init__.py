"""Failover: PostgreSQL clusters declared in clusters.yaml, and the steps that keep one
writable primary behind the router (status, fence, promote, route, rejoin, switchover, watch).
See docs/failover.md."""
