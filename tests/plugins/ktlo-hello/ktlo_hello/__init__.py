"""The `hello.greet` step type, from a package that is not ktlo."""

from __future__ import annotations

from ktlo.steps.registry import StepInput, StepOutput, step_task


class GreetInput(StepInput):
    name: str


class GreetOutput(StepOutput):
    greeting: str


@step_task("hello.greet", GreetInput, GreetOutput, summarize=lambda out: out.greeting)
async def greet(inputs: GreetInput) -> GreetOutput:
    """Greet someone (a step type from a third-party package)."""
    return GreetOutput(greeting=f"hello, {inputs.name}")
