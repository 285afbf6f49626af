"""Start a runbook's deployment without waiting for it: the path for remediation and incidents.

A flow run is created from the runbook's deployment (`runbook/<name>`) with an idempotency
key, so asking twice for the same reason (the same incident, the same failing episode of a
check) creates one run. Whoever serves the deployment (`ktlo serve`, or a worker) executes it.
"""

from __future__ import annotations

from typing import Any

from ktlo.errors import KtloError

FLOW_NAME = "runbook"


class NotDeployed(KtloError):
    pass


def deployment_name(runbook: str) -> str:
    return f"{FLOW_NAME}/{runbook}"


async def deployment_id(client: Any, runbook: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = await client.read_deployment_by_name(deployment_name(runbook))
    except ObjectNotFound:
        raise NotDeployed(
            f"runbook '{runbook}' has no deployment: run `ktlo serve` or `prefect deploy --all`"
        ) from None
    return deployment.id


async def astart_runbook(
    runbook: str,
    *,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    tags: list[str] | None = None,
    client: Any = None,
    deployment: Any = None,
) -> str:
    """Create a flow run of the runbook's deployment; returns the flow run id.

    Pass an open Prefect `client` (and a known `deployment` id) to start many runs cheaply.
    """
    from ktlo.orchestration.client import quick_client

    if client is None:
        async with quick_client() as own:
            return await astart_runbook(
                runbook, params=params, idempotency_key=idempotency_key, tags=tags, client=own
            )
    flow_run = await client.create_flow_run_from_deployment(
        deployment or await deployment_id(client, runbook),
        parameters=params or {},
        idempotency_key=idempotency_key,
        tags=tags or [],
    )
    return str(flow_run.id)


def start_runbook(
    runbook: str,
    *,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    tags: list[str] | None = None,
) -> str:
    import asyncio

    return asyncio.run(
        astart_runbook(runbook, params=params, idempotency_key=idempotency_key, tags=tags)
    )
