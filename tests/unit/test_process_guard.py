from __future__ import annotations

import os
from pathlib import Path

import pytest

from kc_tasks.core.process_guard import flower_refusal, is_loopback, state_file_refusal


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True), ("", False),
     ("0.0.0.0", False), ("::", False), ("192.0.2.2", False), ("flower.internal", False)],
)  # fmt: skip
def test_only_loopback_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("address", "basic_auth", "oauth", "open_api", "refused"),
    [
        ("127.0.0.1", [], "", False, False),
        ("127.0.0.1", [], "", True, True),
        ("::1", ["kc:pw"], "", True, True),
        ("0.0.0.0", [], "", False, True),
        ("", [], "", False, True),
        ("0.0.0.0", ["kc:pw"], "", False, False),
        ("0.0.0.0", [], ".*@example.com", False, False),
        ("0.0.0.0", ["kc:pw"], "", True, True),
    ],
)
def test_flower_needs_authentication_off_the_loopback_interface_and_never_opens_its_api(
    address: str, basic_auth: list[str], oauth: str, open_api: bool, refused: bool
) -> None:
    assert (flower_refusal(address, basic_auth, oauth, open_api) is not None) is refused


def test_a_missing_state_folder_is_created_private(tmp_path: Path) -> None:
    assert state_file_refusal(tmp_path / "state" / "beat-schedule") is None
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_state_folder_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, mode)
    problem = state_file_refusal(folder / "flower.db")
    assert problem is not None and "writable by other users" in problem
