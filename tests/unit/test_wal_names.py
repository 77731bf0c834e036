"""The names a WalArchive gives its slot and its streaming connection."""

from habitat_operator.engines.postgres.replication import SLOT_NAME, application_name, default_slot_name


def test_default_slot_name_is_a_valid_slot_name() -> None:
    assert default_slot_name("team-a", "Ledger.Main") == "habitat_team_a_ledger_main"
    long = default_slot_name("n" * 63, "m" * 253)
    assert len(long) == 63 and SLOT_NAME.match(long)


def test_application_name_fits_postgresql_limit() -> None:
    assert application_name("team-a", "ledger") == "habitat-walarchive-team-a-ledger"
    assert len(application_name("n" * 63, "m" * 253).encode()) == 63
