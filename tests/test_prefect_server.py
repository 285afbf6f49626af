"""The local Prefect server takes SQLite's write lock up front (ktlo.orchestration.prefect_server).

Measured against a plain `prefect server start`: 38-39 of these 40 concurrent child-run
creations were answered 503 "database is locked", each costing its client a two-second sleep.
"""

from __future__ import annotations

import asyncio

import httpx


async def _create_children(api: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        flow = (await client.post("/flows/", json={"name": "ktlo-lock-test"})).json()
        parent = (
            await client.post("/flow_runs/", json={"flow_id": flow["id"], "name": "parent"})
        ).json()

        async def child(i: int) -> int:
            task_run = await client.post(
                "/task_runs/",
                json={
                    "flow_run_id": parent["id"],
                    "task_key": "child",
                    "dynamic_key": str(i),
                    "name": f"child-{i}",
                },
            )
            if task_run.status_code >= 300:
                return task_run.status_code
            run = await client.post(
                "/flow_runs/",
                json={
                    "flow_id": flow["id"],
                    "name": f"child-{i}",
                    "parent_task_run_id": task_run.json()["id"],
                },
            )
            if run.status_code >= 300:
                return run.status_code
            state = await client.post(
                f"/flow_runs/{run.json()['id']}/set_state", json={"state": {"type": "RUNNING"}}
            )
            return state.status_code

        return list(await asyncio.gather(*(child(i) for i in range(n))))


def test_concurrent_child_runs_are_never_refused_for_a_lock(prefect_api: str) -> None:
    codes = asyncio.run(_create_children(prefect_api, 40))
    assert codes == [201] * 40, f"answers: {sorted(set(codes))}, 503s: {codes.count(503)}"
