"""Package providers, one file each; `Provider` is the union a patch step's `providers:` takes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tasks.patch.providers.apt import AptProvider
from tasks.patch.providers.base import ProviderBase
from tasks.patch.providers.pip import PipProvider
from tasks.patch.providers.script import ScriptProvider

Provider = Annotated[AptProvider | PipProvider | ScriptProvider, Field(discriminator="kind")]

__all__ = ["AptProvider", "PipProvider", "Provider", "ProviderBase", "ScriptProvider"]
