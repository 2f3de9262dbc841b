"""Data-sharing policies and patient consent: what each subscriber may receive, applied
before anything leaves (docs/security.md, "Data-sharing policies and consent").

- ``spec``: the ``policy:`` block of a registration, checked and compiled at load
- ``paths``: the element paths a policy removes or masks
- ``disclose``: subscription, policy and consents applied to one message for one subscriber
- ``pseudonyms``: the keyed pseudonyms of a policy's identifier systems, copy on write
- ``consent``: the consent / opt-out registry as the drains read it (a cached snapshot);
  ``broker.store.consents`` changes it, ``broker.delivery.explain`` explains a decision
"""

from broker.policy.consent import (
    VERSION_KEY,
    Consent,
    ConsentError,
    ConsentLookup,
    Consents,
    snapshot,
)
from broker.policy.disclose import Change, Disclosure, disclose, patient_identifiers, refusal
from broker.policy.spec import PolicySpec

__all__ = [
    # the registry
    "VERSION_KEY",
    # applying
    "Change",
    "Consent",
    "ConsentError",
    "ConsentLookup",
    "Consents",
    "Disclosure",
    # the registration's block
    "PolicySpec",
    "disclose",
    "patient_identifiers",
    "refusal",
    "snapshot",
]
