"""Which Debian packages the test host fetches for another architecture:
the dependency closure, on a package list made here (no apt, no network)."""

import pytest

from tests.testhost import debs

# name -> fields, as `apt-cache show` gives them for the candidate versions.
APT = {
    "python3": {"Version": "3.11.2-1", "Pre-Depends": "python3-minimal (= 3.11.2-1)",
                "Depends": "python3.11 (>= 3.11.2-1~), libpython3-stdlib (= 3.11.2-1)"},
    "python3-minimal": {"Version": "3.11.2-1", "Depends": "dpkg (>= 1.13.20)"},
    "python3.11": {"Version": "3.11.2-6", "Depends": "media-types | mime-support, libc6:any"},
    "libpython3-stdlib": {"Version": "3.11.2-1", "Depends": "libc6 (>= 2.34)"},
    "mime-support": {"Version": "3.66"},
    "libc6": {"Version": "2.36-9", "Depends": "libgcc-s1"},
    "libgcc-s1": {"Version": "12.2.0-14", "Depends": "gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)"},
    "gcc-12-base": {"Version": "12.2.0-14"},
    "dpkg": {"Version": "1.21.22", "Depends": "perl-base"},
    "broken": {"Version": "1", "Depends": "virtual-only | also-virtual"},
}  # fmt: skip


@pytest.fixture
def apt(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """APT as the package list, and the queries made of it."""
    queries: list[list[str]] = []

    def show(names: list[str], arch: str) -> dict[str, dict[str, str]]:
        assert arch == "arm64"
        queries.append(list(names))
        return {n: {"Package": n, **APT[n]} for n in names if n in APT}

    monkeypatch.setattr(debs, "_show", show)
    return queries


def test_closure_follows_depends_and_pre_depends(apt: list[list[str]]) -> None:
    assert debs._closure(("python3",), "arm64") == [
        ("gcc-12-base", "12.2.0-14"),
        ("libc6", "2.36-9"),
        ("libgcc-s1", "12.2.0-14"),
        ("libpython3-stdlib", "3.11.2-1"),
        ("mime-support", "3.66"),  # media-types is not in this list
        ("python3", "3.11.2-1"),
        ("python3-minimal", "3.11.2-1"),  # but not dpkg: install-time only
        ("python3.11", "3.11.2-6"),
    ]
    # One query per level of the graph (five deep here), not one per package.
    assert len(apt) == 5


def test_closure_names_what_it_cannot_find(apt: list[list[str]]) -> None:
    with pytest.raises(debs.TestHostError, match="apt knows no arm64 nosuch"):
        debs._closure(("python3", "nosuch"), "arm64")
    with pytest.raises(debs.TestHostError, match="no arm64 package provides virtual-only | also"):
        debs._closure(("broken",), "arm64")


def test_alternatives_drop_versions_and_arch_qualifiers() -> None:
    field = "libc6 (>= 2.34), media-types | mime-support, python3:any (>= 3.9)"
    assert debs._alternatives(field) == [["libc6"], ["media-types", "mime-support"], ["python3"]]
