"""ISBT 128 DIN: the published check character examples, every form a site types or scans, every refusal."""

from __future__ import annotations

import pytest

from app.protocol.identity import CHARSET, DIN, DinError, check_character, parse_din

# Worked examples with their published check characters: the ISBT 128 Technical Specification's Appendix A
# (G1234 17 654321 -> A, checksum 10, type 3 flags 70) and its donation numbering figure (A9999 21 123456 -> 3),
# and the UK transfusion guidelines' ISBT 128 check character annex (G123 498 654 321 -> H, checksum 17).
PUBLISHED = [("G123417654321", "A"), ("A999921123456", "3"), ("G123498654321", "H")]


@pytest.mark.parametrize(("din", "check"), PUBLISHED)
def test_check_character_of_the_published_examples(din: str, check: str) -> None:
    assert check_character(din) == check


def test_the_appendix_example_step_by_step() -> None:
    # G1234 17 654321: weighted sum 146178 (each value x 2^position from the right), mod 37 = 28, 38 - 28 = 10 -> 'A'
    din = "G123417654321"
    weighted = sum(CHARSET.index(c) * 2 ** (13 - i) for i, c in enumerate(din))
    assert weighted == 146178 and weighted % 37 == 28 and (38 - weighted % 37) % 37 == 10
    assert CHARSET[10] == "A" == check_character(din)


def test_the_check_character_can_be_any_of_the_37() -> None:
    seen = {check_character(f"W1234{n:08d}") for n in range(0, 2000)}
    assert seen == set(CHARSET)  # '*' (value 36) included
    star = next(f"W1234{n:08d}" for n in range(0, 2000) if check_character(f"W1234{n:08d}") == "*")
    assert parse_din(star + "*").check == "*"


def test_check_character_takes_spaces_and_refuses_what_is_not_a_din() -> None:
    assert check_character("G1234 17 654321") == "A"
    for bad in ("G123417654321A", "G12341765432", "=G123417654321", "O123417654321"):
        with pytest.raises(DinError) as exc:
            check_character(bad)
        assert exc.value.rule == "din_format"


@pytest.mark.parametrize(("text", "flags", "check"), [
    ("G1234 17 654321 A", None, "A"),  # eye-readable, as printed
    ("G123417654321A", None, "A"),  # typed without spaces
    ("g1234 17 654321 a", None, "A"),  # lower case read as capitals
    ("  G1234\t17 654321  A ", None, "A"),  # tabs and surrounding spaces
    ("A9999 21 123456 01 3", "01", "3"),  # with the flags shown beside it on the label
    ("G123 498 654 321 H", None, "H"),  # grouped in threes
    ("=G12341765432170", "70", "A"),  # scanned, type 3 flags carry the check value 10 + 60
    ("=W1234 26 123456 00", "00", None),  # scanned with spaces, flags unused: no keyboard check in a bar code
    ("=W123426123456007", "00", "7"),  # scanned, then the check character typed after it
    ("G12341765432170", "70", "A"),  # typed with type 3 flags: verified like the check character
])
def test_accepted_forms(text: str, flags: str | None, check: str | None) -> None:
    d = parse_din(text)
    assert (d.flags, d.check) == (flags, check)
    assert str(d) == d.facility + d.year + d.sequence
    assert len(str(d)) == 13 and len(d.facility) == 5 and len(d.year) == 2 and len(d.sequence) == 6


def test_the_parts_and_the_canonical_form() -> None:
    d = parse_din("W1234 26 123456 00 7")
    assert d == DIN("W1234", "26", "123456", "00", "7")
    assert str(d) == "W123426123456" and d.grouped == "W1234 26 123456"
    assert parse_din("1A234 26 000001 " + check_character("1A23426000001")).facility == "1A234"  # alphas at 2-3


def test_require_check_false_takes_a_typed_din_without_one() -> None:
    d = parse_din("G1234 17 654321", require_check=False)
    assert (str(d), d.check, d.flags) == ("G123417654321", None, None)
    with pytest.raises(DinError, match="check character 'B' does not match"):
        parse_din("G1234 17 654321 B", require_check=False)  # a wrong one is still wrong


@pytest.mark.parametrize(("text", "rule", "position", "message"), [
    ("", "din_format", None, "no DIN given"),
    ("   ", "din_format", None, "no DIN given"),
    ("W1234 26 12345", "din_format", None, "has 12 characters after removing spaces; a DIN is 13 characters"),
    ("W1234 26 123456 00 7 1", "din_format", None, "has 17 characters"),
    ("=W123426123456", "din_format", None, "has 13 characters after removing spaces and the leading =; a scan is"),
    ("W1234-26-123456-7", "din_format", 6, "character 6 ('-') cannot be in a DIN"),
    ("W1234 26 123456 \u00e9", "din_format", 14, "character 14 ('\u00c9') cannot be in a DIN"),
    ("O1234 26 123456 7", "din_format", 1, "is the first character of the facility identification number and "
                                           "must be a letter A-N or P-Z or a digit 1-9 (the letter O is not used"),
    ("01234 26 123456 7", "din_format", 1, "(a DIN never starts with 0)"),
    ("*1234 26 123456 7", "din_format", 1, "character 1 ('*')"),
    ("WO234 26 123456 7", "din_format", 2, "(the letter O: is it a zero?)"),
    ("W12A4 26 123456 7", "din_format", 4, "character 4 ('A') is in the facility identification number and must "
                                           "be a digit"),
    ("W1234 2X 123456 7", "din_format", 7, "character 7 ('X') is in the year"),
    ("W1234 26 12345I 7", "din_format", 13, "is in the sequence number and must be a digit (the letter I: is it"),
    ("W1234 26 123456 0I 7", "din_format", 15, "flag character 2 ('I') must be a digit or a letter A-H, J-N, P"),
    ("=W1234 26 123456 Q0", "din_format", 14, "flag character 1 ('Q')"),
    ("G1234 17 654321 B", "din_check_character", 14, "check character 'B' does not match the DIN as entered"),
    # two digits swapped: caught
    ("G1234 17 654312 A", "din_check_character", 14, "check character 'A' does not match"),
    ("A9999 21 123456 01 4", "din_check_character", 16, "check character '4' does not match"),
    ("G1234 17 654321", "din_check_character", None, "the check character is missing; type the boxed character"),
    ("A9999 21 123456 01", "din_check_character", None, "the check character is missing"),
    ("=G12341765432171", "din_check_character", 14, "the flag characters 71 do not carry the DIN's check value"),
    ("=G12341765432170B", "din_check_character", 16, "check character 'B' does not match"),
])
def test_refusals(text: str, rule: str, position: int | None, message: str) -> None:
    with pytest.raises(DinError) as exc:
        parse_din(text)
    e = exc.value
    assert isinstance(e, ValueError)
    assert (e.rule, e.position) == (rule, position)
    assert message in str(e)
    assert e.errors == [{"line": None, "column": position, "field": "din", "rule": rule, "detail": str(e)}]


def test_a_wrong_check_character_is_refused_without_giving_the_right_one_away() -> None:
    with pytest.raises(DinError) as exc:
        parse_din("G1234 17 654321 B")
    assert exc.value.expected == "A"  # for the server's log only
    assert "read the label again" in str(exc.value) and "'A'" not in str(exc.value)
    with pytest.raises(DinError) as missing:
        parse_din("G1234 17 654321")
    assert missing.value.expected is None and "'A'" not in str(missing.value)  # a missing one is not given away


def test_every_single_character_typo_is_caught() -> None:
    din = "W123426123456"
    k = check_character(din)
    for i in range(13):
        for c in "0123456789":
            typo = din[:i] + c + din[i + 1:]
            if typo != din and (i != 0 or c != "0"):
                with pytest.raises(DinError):
                    parse_din(typo + k)


def test_every_swap_of_neighbouring_characters_is_caught() -> None:
    din = "W123426987651"
    k = check_character(din)
    for i in range(1, 12):  # positions 2..13: a swap there keeps the DIN's format
        swapped = din[:i] + din[i + 1] + din[i] + din[i + 2:]
        if swapped != din:
            with pytest.raises(DinError) as exc:
                parse_din(swapped + k)
            assert exc.value.rule == "din_check_character"
