import datetime as dt

import pytest

from tuneops.data.licenses import (check_use, most_restrictive, normalise_license, obligations, permitted_uses,
                                   register_license)
from tuneops.errors import InvalidInput


def test_spdx_ids_are_normalised_and_unknown_ones_refused_with_a_suggestion():
    assert normalise_license("mit") == "MIT" and normalise_license(" cc-by-nc-4.0 ") == "CC-BY-NC-4.0"
    with pytest.raises(InvalidInput, match="'CC-BY-NC' is not a licence") as e:
        normalise_license("CC-BY-NC")
    assert "CC-BY-NC-4.0" in e.value.hint
    with pytest.raises(InvalidInput, match="a licence is required") as e:
        normalise_license("")
    assert "--license unknown" in e.value.hint


def test_the_most_restrictive_row_decides():
    assert permitted_uses(["MIT", "Apache-2.0"]) == {"commercial", "internal", "research"}
    assert permitted_uses(["MIT", "CC-BY-NC-4.0"]) == {"research"}
    assert permitted_uses(["MIT", "LicenseRef-internal-only"]) == {"internal", "research"}
    assert most_restrictive(["MIT", "CC-BY-SA-4.0", "CC-BY-NC-4.0"]) == "CC-BY-NC-4.0"
    assert obligations(["MIT", "CC-BY-SA-4.0"]) == ["attribution", "share-alike"]


def test_non_commercial_rows_block_commercial_use_naming_sources():
    rows = [{"license": "MIT", "source": "crm"}, {"license": "CC-BY-NC-4.0", "source": "forum-dump"},
            {"license": "CC-BY-NC-4.0", "source": "forum-dump"}]
    check = check_use(rows, "commercial")
    assert not check.ok
    assert check.blocked == [{"reason": "license", "license": "CC-BY-NC-4.0", "sources": ["forum-dump"], "rows": 2}]
    msg = check.message("commercial", "ds-1")
    assert "2 row(s) under CC-BY-NC-4.0" in msg and "forum-dump" in msg and "permits research" in msg
    assert check_use(rows, "research").ok


def test_rows_past_retention_block_every_use():
    rows = [{"license": "MIT", "source": "tickets", "retention_until": "2026-01-31"},
            {"license": "MIT", "source": "docs", "retention_until": "2030-01-01"}]
    check = check_use(rows, "research", today=dt.date(2026, 11, 23))
    assert not check.ok and check.blocked[0]["reason"] == "retention" and check.blocked[0]["sources"] == ["tickets"]
    assert check_use(rows, "research", today=dt.date(2025, 1, 1)).ok


def test_unknown_use_and_team_licences():
    with pytest.raises(InvalidInput, match="intended use 'prod'"):
        check_use([], "prod")
    register_license("LicenseRef-acme-partner", {"internal"}, note="partner data")
    assert permitted_uses(["LicenseRef-acme-partner"]) == {"internal"}
    with pytest.raises(InvalidInput, match="unknown use"):
        register_license("LicenseRef-x", {"resale"})
