"""Monitoring and alerting: the `health.sweep` step type (see docs/monitoring.md).

checks      the input: one pydantic model per check type (http, tcp, dns, tls, ...)
conditions  Gatus-style conditions, parsed when the runbook is validated
probes      async probes sharing one httpx client, each bounded by its timeout
state       the alert state machine (OK / DEGRADED / FAILING), a pure function
ledger      state kept in the ktlo store, advanced under a database lock
alerts      notification text and delivery; remediation: runbooks started on FAILING
windows     maintenance windows; validate: runbook-time checks; sweep: the step task
"""
