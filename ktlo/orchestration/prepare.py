"""Prepare a Prefect server for ktlo: the work pool its deployments use and the zombie automation."""

from __future__ import annotations

from ktlo.orchestration.deployments import WORK_POOL


async def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the process work pool if it is missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            await client.read_work_pool(name)
            return False
        except ObjectNotFound:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    description="ktlo runbooks (created by `ktlo server prepare`)",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            return True


async def prepare(pool: str = WORK_POOL) -> list[str]:
    from ktlo.orchestration.crashes import ensure_zombie_automation

    done = []
    if await ensure_work_pool(pool):
        done.append(f"created process work pool '{pool}'")
    else:
        done.append(f"work pool '{pool}' exists")
    await ensure_zombie_automation()
    done.append("zombie-run automation in place (runs without heartbeats are marked Crashed)")
    return done


if __name__ == "__main__":  # run by `local_server.start` against the server it just started
    import asyncio

    asyncio.run(prepare())
