"""The custom resources' API: pydantic models, the source of truth for the CRDs in crds/.

Adding a kind: write a module like backup.py that defines its spec/status models and a
KindInfo, then list that KindInfo in ALL_KINDS.
"""

from habitat_operator.api.backup import BACKUP
from habitat_operator.api.common import API_VERSION, GROUP, VERSION, KindInfo
from habitat_operator.api.migration import MIGRATION
from habitat_operator.api.replayjob import REPLAYJOB
from habitat_operator.api.restore import RESTORE
from habitat_operator.api.scalepolicy import SCALE_POLICY
from habitat_operator.api.walarchive import WAL_ARCHIVE

ALL_KINDS: list[KindInfo] = [BACKUP, RESTORE, MIGRATION, REPLAYJOB, SCALE_POLICY, WAL_ARCHIVE]

__all__ = ["ALL_KINDS", "API_VERSION", "GROUP", "VERSION", "KindInfo"]
