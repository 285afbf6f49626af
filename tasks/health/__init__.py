"""Monitoring and alerting: the `health.sweep` step type (see docs/monitoring.md).

checks/       one module per check type (http, tcp, dns, tls, ...): its model, placeholders
              and probe; `checks/base.py` is what they share and the registry of types
sweep_input   the step's input, a union of the registered types; input_errors: its
              validation errors located on the YAML
conditions    Gatus-style conditions, parsed when the runbook is validated
prober        one sweep's shared resources (http_lanes: HTTP clients per origin; a thread
              pool; a bound on probes in flight); each probe bounded by its timeout
facts         helpers probes share; probe_errors: a failed probe as one line
results       a probe's facts judged against its conditions
state         the alert state machine (OK / DEGRADED / FAILING), a pure function
ledger        state kept in the ktlo store (store: its tables), advanced under a database lock
alerts        notification text and delivery; remediation: runbooks started on FAILING
windows       maintenance windows; validate: runbook-time checks; sweep: the step task
"""
