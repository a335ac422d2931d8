"""The provider library releases pyproject.toml pins verify genuine webhook signatures.

kc_tasks checks Razorpay's and Stripe's signatures with the providers' own libraries
(kc_tasks/providers/), so their release is part of what is tested: under stripe 15.5 and older,
`WebhookSignature.verify_header` given the raw body as bytes refused every genuine webhook.
pyproject.toml pins each library; these tests check that the imported release is the pinned
one and that, under it, a body signed as the provider signs it (built now) is accepted, one
signed with another secret is refused, and for Stripe, a correct signature whose timestamp is
older than the 300 s tolerance is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.metadata
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ("stripe", "razorpay")
SECRET = "whsec_kc_library_versions"
# Non-ASCII on purpose: the libraries sign text, encoded as UTF-8, as the raw body is.
BODY = '{"id":"evt_versions","type":"payment_intent.succeeded","data":{"object":{"name":"Zoë","note":"₹499"}}}'.encode()


def admitted(name: str) -> Requirement:
    """The requirement pyproject.toml's [project] dependencies give `name`."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    found = [req for req in map(Requirement, dependencies) if req.name == name]
    assert len(found) == 1, f"pyproject.toml names {name} {len(found)} times among [project] dependencies"
    return found[0]


def pinned(name: str) -> str:
    """The release pyproject.toml pins `name` to (`==`)."""
    req = admitted(name)
    pins = [spec.version for spec in req.specifier if spec.operator == "=="]
    if len(pins) != 1 or len(req.specifier) != 1:
        raise ValueError(f"{req}: pin the release the tests run on (==)")
    return pins[0]


def library_version(name: str) -> str:
    """The version of the imported library: stripe.VERSION; razorpay has no version attribute,
    only its distribution's metadata (what razorpay's own Client reads for its User-Agent)."""
    if name == "stripe":
        import stripe

        return stripe.VERSION
    return importlib.metadata.version(name)


def stripe_header(secret: str, body: bytes, timestamp: int) -> str:
    """Stripe's scheme: v1 = hex HMAC-SHA256(secret, "<t>.<body>")."""
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def razorpay_header(secret: str, body: bytes) -> str:
    """Razorpay's scheme: hex HMAC-SHA256(secret, raw body)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def outcomes(name: str) -> dict[str, Any]:
    """What kc_tasks.providers.<name>.verify says of a genuine, a wrongly signed and (Stripe) a
    stale webhook, with the imported library's version."""
    provider = importlib.import_module(f"kc_tasks.providers.{name}")
    now = int(time.time())
    if name == "stripe":
        headers = {
            "genuine": stripe_header(SECRET, BODY, now),
            "wrong": stripe_header("whsec_someone_else", BODY, now),
            "stale": stripe_header(SECRET, BODY, now - provider.TOLERANCE_SECONDS - 60),
        }
    else:
        headers = {"genuine": razorpay_header(SECRET, BODY), "wrong": razorpay_header("someone_else", BODY)}
    return {
        "version": library_version(name),
        "verify": {case: provider.verify(BODY, header, [SECRET]) for case, header in headers.items()},
    }


def assert_verifies(name: str, found: dict[str, Any]) -> None:
    results = found["verify"]
    assert results["genuine"] is None, f"{name} {found['version']} refused a genuine signature: {results['genuine']}"
    assert isinstance(results["wrong"], str), f"{name} {found['version']} accepted a wrong signature"
    assert "does not match" in results["wrong"]
    if name == "stripe":
        assert isinstance(results["stale"], str), f"stripe {found['version']} accepted a stale timestamp"
        assert "tolerance" in results["stale"]


@pytest.mark.parametrize("name", PROVIDERS)
def test_the_pinned_release_is_imported_and_verifies(name: str) -> None:
    found = outcomes(name)
    assert Version(found["version"]) == Version(pinned(name)), f"{name} {found['version']} is not pyproject's pin"
    assert found["version"] == importlib.metadata.version(name)
    assert_verifies(name, found)
