"""The service side of the hotline: seat groups, services and the menu that chooses one.

[001]: customers are served by tier — 高端 by the senior group (高级坐席组),
中端 by the middle group, 低端 by the junior group; 个性化服务 is for senior
customers only, the other services appear in every group. [004] adds the
pre-sale / in-order / after-sale split. A menu digit selects the service;
the tier selects the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

SEAT_GROUPS = {"senior": "高级坐席组", "middle": "中级坐席组", "junior": "初级坐席组"}  # [001]
SERVICES = {  # [001] services by group, [004] stages
    "consulting": "业务咨询",
    "recommendation": "产品推荐",
    "complaint": "投诉处理",
    "after_sales": "售后服务",
    "personalised": "个性化服务",
}


@dataclass(frozen=True, slots=True)
class MenuConfig:
    enabled: bool = True
    timeout_seconds: float = 5.0
    choices: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {"1": "consulting", "2": "recommendation", "3": "complaint", "4": "after_sales", "5": "personalised"}
        )
    )
    default_service: str = "consulting"
    # service -> tiers allowed to choose it ([001]: 个性化服务 is senior-only)
    allowed: MappingProxyType[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({"personalised": frozenset({"senior"})})
    )

    def service_for(self, digit: str, tier: str) -> str | None:
        service = self.choices.get(digit)
        if service is None or tier not in self.allowed.get(service, frozenset(SEAT_GROUPS)):
            return None
        return service


