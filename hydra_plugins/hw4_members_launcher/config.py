"""The launcher's config: `hydra/launcher=members` (no settings of its own)."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside
# sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class MembersLauncherConf:
    _target_: str = "hydra_plugins.hw4_members_launcher.members_launcher.MembersLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="members", node=MembersLauncherConf, provider="hw4")
