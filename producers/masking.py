"""Masking in the SDK: the processor's masking rules applied before an event leaves the
process, so the raw Kafka record never holds the original (docs/masking.md).

The rules and actions are the ones of ``PUT /v1/masking`` (audit_events/masking.py).
``hash`` needs the tenant's key: give ``secret`` (the deployment's
AUDITSTREAM_MASKING_SECRET, from which every tenant's key is derived) or
``keys`` (tenant -> key, as ``auditstream masking key TENANT`` prints it in hex).
With neither, a ``hash`` rule redacts. The processor applies its stored rules
again; masking is idempotent, so values the SDK masked stay as they are and
equal values hash equally on both paths (same key).

    masking = ProducerMasking.for_tenants(
        {"acme": [{"path": "metadata.email", "action": "hash"}]}, keys={"acme": key}
    )
    producer = AuditProducer(ProducerConfig(bootstrap=..., masking=masking))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit_events.masking import Masker, MaskingRules, mask_event, tenant_key
from audit_events.schema import AuditEvent

ANY_TENANT = "*"


class ProducerMasking:
    """Masks events per tenant; ``rules["*"]`` applies to tenants without rules of their own."""

    def __init__(
        self,
        rules: Mapping[str, MaskingRules],
        *,
        secret: bytes | str | None = None,
        keys: Mapping[str, bytes | str] | None = None,
    ) -> None:
        self._rules = dict(rules)
        self._secret = secret
        self._keys = {
            t: bytes.fromhex(k) if isinstance(k, str) else k for t, k in (keys or {}).items()
        }
        self._maskers: dict[str, Masker | None] = {}

    @classmethod
    def for_tenants(
        cls,
        rules: Mapping[str, Any],
        *,
        secret: bytes | str | None = None,
        keys: Mapping[str, bytes | str] | None = None,
    ) -> ProducerMasking:
        """``rules``: tenant -> a list of ``{"path", "action"}`` (or ``{"rules": [...]}``)."""
        parsed = {
            tenant: MaskingRules.model_validate({"rules": r} if isinstance(r, list) else r)
            for tenant, r in rules.items()
        }
        return cls(parsed, secret=secret, keys=keys)

    def masker(self, tenant: str) -> Masker | None:
        if tenant not in self._maskers:
            rules = self._rules.get(tenant, self._rules.get(ANY_TENANT))
            if rules is None or not rules.rules:
                self._maskers[tenant] = None
            else:
                key = self._keys.get(tenant)
                if key is None and self._secret is not None:
                    key = tenant_key(self._secret, tenant)
                self._maskers[tenant] = Masker(rules, key)
        return self._maskers[tenant]

    def apply(self, event: AuditEvent) -> AuditEvent:
        """``event`` masked by its tenant's rules (the same event when none apply)."""
        masker = self.masker(event.tenant)
        return event if masker is None else mask_event(event, masker)
