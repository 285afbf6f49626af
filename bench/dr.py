"""DR (SPEC §9): the example drill vs a plain shell script doing the same work, and readiness
of 100 plans x 10 services.

1. `ktlo dr drill example` (in this process, against the session's Prefect server) vs a
   shell script that restores the same two backups (pg_restore into a scratch database,
   zstd | tar into a directory), starts the same app, waits for it, runs the same checks
   (row count, file present, HTTP 200) in the same order, then cleans up. Target ≤ 1.3x.
   Also measured: Prefect's floor for the drill's shape (a flow run and three empty child
   runs started at once), the part of the drill no ktlo code can remove while each service
   is a child run.
2. `readiness()` over 100 plans of 10 services each, 1,000 verified backups in the catalog.
   Target ≤ 1 s.

    python -m bench.dr
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Result, measure, ratio_line, rounds, session

REPO = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DRILL_TARGET = 1.3
READINESS_TARGET_S = 1.0

SHELL = r"""
set -e
S=$(mktemp -d); DB=bench_shell_$$
trap 'kill $(cat $S/app.pid 2>/dev/null) 2>/dev/null; psql "$PG" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$S"' EXIT
# wave 0: the database and the uploads, side by side
( psql "$PG" -qc "CREATE DATABASE $DB" &&
  pg_restore --single-transaction --exit-on-error --no-owner --no-privileges -d "host=127.0.0.1 user=postgres dbname=$DB" "$DUMP" &&
  test "$(psql "host=127.0.0.1 user=postgres dbname=$DB" -Atc 'SELECT count(*) FROM orders')" -ge 1 ) & A=$!
( mkdir -p "$S/uploads" && zstd -dc "$TARBALL" | tar -x -C "$S/uploads" &&
  test -s "$S/uploads/2026/invoice-1.txt" ) & B=$!
wait $A && wait $B
# wave 1: the app, once both are verified
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid -f python3 - "$PORT" "host=127.0.0.1 user=postgres dbname=$DB" "$S/uploads" "$S/app.pid" < "$APP" > "$S/app.log" 2>&1
python3 - "$PORT" 10 < "$WAIT"
test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/health)" = 200
"""


def _app_sources(tmp: Path) -> tuple[Path, Path]:
    """The app and the wait loop, taken from the shipped runbook (the same code both ways)."""
    import yaml

    rb = yaml.safe_load((REPO / "runbooks" / "dr-example-app.yaml").read_text())
    steps = {s["id"]: s for s in rb["steps"]}
    app, wait = tmp / "app.py", tmp / "wait.py"
    app.write_text(steps["start"]["with"]["stdin"])
    wait.write_text(steps["wait"]["with"]["command"][2])
    return app, wait


def _setup() -> str:
    from flows.runbook import runbook_flow

    database = f"dr_bench_{uuid.uuid4().hex[:8]}"
    call: Any = runbook_flow(
        runbook=str(REPO / "runbooks" / "dr-example-setup.yaml"),
        database=database,
        return_state=True,
    )
    state = asyncio.run(call)
    if not state.is_completed():
        raise RuntimeError(f"dr-example-setup failed: {state.message}")
    return database


def _drill() -> None:
    from flows.dr import drill_flow

    call: Any = drill_flow(plan=str(REPO / "plans" / "example.yaml"), return_state=True)
    doc = asyncio.run(call).result()
    if doc["verdict"] != "passed":
        raise RuntimeError(f"drill failed: {doc['notes']}")


def _floor() -> Any:
    """Prefect's own cost of a drill's shape, with nothing to do: a flow run whose three child
    runs start at once (what `dr-drill` and its `dr-service` runs cost before any work)."""
    from prefect import flow

    @flow(name="bench-floor-service", validate_parameters=False)
    async def child(name: str) -> str:
        return name

    @flow(name="bench-floor-drill", validate_parameters=False)
    async def parent() -> None:
        await asyncio.gather(*(child(name) for name in ("db", "uploads", "app")))

    return lambda: asyncio.run(parent())


def _shell(env: dict[str, str]) -> None:
    subprocess.run(["bash", "-c", SHELL], env=env, check=True, capture_output=True)


def _readiness_plans(root: Path, plans: int = 100, services: int = 10) -> None:
    from ktlo.store.models import utcnow
    from tasks.backup import store as catalog

    root.mkdir(parents=True, exist_ok=True)
    for p in range(plans):
        lines = [f"name: bench-{p}", "services:"]
        for s in range(services):
            source = f"bench-{p}-{s}"
            catalog.add(
                catalog.Backup(
                    id=uuid.uuid4().hex,
                    source=source,
                    kind="directory",
                    status=catalog.COMPLETE,
                    completed_at=utcnow(),
                    verify_status="ok",
                    verified_at=utcnow(),
                    sha256="0" * 64,
                )
            )
            lines.append(
                textwrap.indent(
                    textwrap.dedent(f"""\
                    - name: s{s}
                      rto_s: 600
                      rpo_s: 86400
                      depends_on: {[f"s{s - 1}"] if s else []}
                      data: [{{provider: backup, source: {source}}}]
                      recover:
                        runbook: dr-example-restore-uploads
                        params: {{backup_id: "{{{{ data[0].id }}}}", target: "{{{{ scratch.dir }}}}/u"}}
                      verify:
                        - {{name: f{s}, type: command, command: [test, -d, "{{{{ scratch.dir }}}}"]}}
                    """),
                    "  ",
                )
            )
        (root / f"bench-{p}.yaml").write_text("\n".join(lines) + "\n")


def run() -> Result:
    import os

    with session():
        from ktlo.settings import reload_settings

        os.environ["KTLO_RUNBOOKS"] = str(REPO / "runbooks")  # the shipped example's runbooks
        reload_settings()
        database = _setup()
        from tasks.backup import store as catalog

        dump = catalog.latest("dr-example-db", verified=True)
        tarball = catalog.latest("dr-example-uploads", verified=True)
        if dump is None or tarball is None:
            raise RuntimeError("dr-example-setup left no verified backups")
        with tempfile.TemporaryDirectory() as tmp:
            app, wait = _app_sources(Path(tmp))
            env = {
                **os.environ,
                "PG": PG,
                "DUMP": dump.location,
                "TARBALL": tarball.location,
                "APP": str(app),
                "WAIT": str(wait),
            }
            n = rounds(3)
            shell = measure(lambda: _shell(env), n)
            drill = measure(_drill, n)
            floor = measure(_floor(), n)
        drill_ratio = ratio_line(
            "DR drill (example plan)", "ktlo dr drill", drill.median, "shell script",
            shell.median, target=DRILL_TARGET,
        )  # fmt: skip
        ratio_line(
            "  of which Prefect's floor", "1 flow run + 3 empty child runs", floor.median,
            "shell script", shell.median,
        )  # fmt: skip
        print(
            f"  drill timings {drill.text()}; shell {shell.text()}; floor {floor.text()}",
            flush=True,
        )
        subprocess.run(
            ["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], check=False
        )

        from ktlo.settings import get_settings
        from tasks.dr.readiness import readiness

        plans = get_settings().home_dir / "bench-plans"
        _readiness_plans(plans)
        readiness(directory=plans)  # first pass records each plan's state
        timing = measure(lambda: readiness(directory=plans), rounds(5), warmup=0)
        ready_ratio = ratio_line(
            "DR readiness, 100 plans x 10 services", "readiness()", timing.median,
            "target", READINESS_TARGET_S, target=1.0,
        )  # fmt: skip
        print(f"  readiness timings: {timing.text()}", flush=True)
        return Result(
            "dr",
            f"drill {drill_ratio:.2f}x the shell script; readiness of 1,000 services "
            f"{timing.median:.2f} s",
            {
                "drill_s": drill.median,
                "shell_s": shell.median,
                "prefect_floor_s": floor.median,
                "drill_ratio": round(drill_ratio, 3),
                "readiness_s": timing.median,
                "readiness_ratio_to_target": round(ready_ratio, 3),
            },
        )


if __name__ == "__main__":
    started = time.perf_counter()
    result = run()
    print(result.headline, f"({time.perf_counter() - started:.0f} s)")
