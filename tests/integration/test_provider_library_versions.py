"""Both ends of each provider library range in pyproject.toml verify a genuine webhook signature.

pyproject.toml admits a range of stripe and of razorpay releases, but the venv holds only the
newest. A release the tests never ran can break verification: under stripe 15.5 and older,
`WebhookSignature.verify_header` given the raw body as bytes refused every genuine webhook.
So the LOWEST release each range admits (its `>=` bound, read from pyproject.toml so this test
follows the file) is installed into a temporary folder, once per run, and
kc_tasks.providers.<name>.verify runs in a subprocess whose PYTHONPATH puts that folder first;
the newest (installed) release runs the same checks in-process.

The checks: a body signed as the provider signs it, built now, is accepted (None); one signed
with another secret is refused (a reason string); for Stripe, a correct signature whose
timestamp is older than the 300 s tolerance is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
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
INSTALL_TIMEOUT = 300
CHECK_TIMEOUT = 60


def admitted(name: str) -> Requirement:
    """The requirement pyproject.toml's [project] dependencies give `name`."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    found = [req for req in map(Requirement, dependencies) if req.name == name]
    assert len(found) == 1, f"pyproject.toml names {name} {len(found)} times among [project] dependencies"
    return found[0]


def lowest_admitted(name: str) -> str:
    """The release the `>=` lower bound of `name`'s range names."""
    req = admitted(name)
    bounds = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(bounds) != 1:
        raise ValueError(f"{req}: give the range one `>=` lower bound, so its lowest release can be tested")
    low = bounds[0]
    if not req.specifier.contains(low):
        raise ValueError(f"{req}: its lower bound {low} is excluded by the rest of the range")
    return low


LOWEST = {name: lowest_admitted(name) for name in PROVIDERS}


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
    stale webhook, with the imported library's version and file. Run in-process and in the
    subprocess alike."""
    library = importlib.import_module(name)
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
        "file": library.__file__,
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


def _subprocess_main(name: str, pinned: str, folder: str) -> None:
    """In the subprocess: check the pinned release is the one imported, then report outcomes."""
    found = outcomes(name)
    if Version(found["version"]) != Version(pinned):
        raise SystemExit(f"{name} {found['version']} imported, not the pinned {pinned}")
    if not Path(found["file"]).resolve().is_relative_to(Path(folder).resolve()):
        raise SystemExit(f"{name} imported from {found['file']}, not from {folder}")
    print(json.dumps(found))


@pytest.fixture(scope="session", params=PROVIDERS, ids=[f"{name}=={LOWEST[name]}" for name in PROVIDERS])
def lowest_release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(name, version, folder): the lowest admitted release of a provider library, installed
    once per run into a folder of its own. A failed install fails the test: never a skip."""
    name: str = request.param
    version = LOWEST[name]
    folder = tmp_path_factory.mktemp(f"{name}-{version}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    command += ["--target", str(folder), f"{name}=={version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing {name}=={version} took over {INSTALL_TIMEOUT} s")
    if done.returncode != 0:
        pytest.fail(f"installing {name}=={version} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return name, version, folder


def test_the_lowest_admitted_release_verifies(lowest_release: tuple[str, str, Path]) -> None:
    name, version, folder = lowest_release
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), str(ROOT), env.get("PYTHONPATH")]))
    code = f"from {__name__} import _subprocess_main; _subprocess_main({name!r}, {version!r}, {str(folder)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT
    )
    assert done.returncode == 0, f"{name}=={version}: the check failed:\n{done.stdout}\n{done.stderr}"
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Version(found["version"]) == Version(version)
    assert_verifies(name, found)


@pytest.mark.parametrize("name", PROVIDERS, ids=[f"{name}=={importlib.metadata.version(name)}" for name in PROVIDERS])
def test_the_newest_installed_release_verifies(name: str) -> None:
    found = outcomes(name)
    assert found["version"] == importlib.metadata.version(name)
    assert admitted(name).specifier.contains(found["version"]), f"{name} {found['version']} is outside pyproject.toml"
    assert_verifies(name, found)
