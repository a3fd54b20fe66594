"""ISBT 128 Donation Identification Numbers (DIN), pure: what a site types or scans in, the checked DIN out.

The DIN (ISBT 128 Data Structure 001) is 13 characters, `Fppppyynnnnnn`:
- `Fpppp` the Facility Identification Number (FIN): the first character A-N, P-Z or 1-9 (never the letter O or
  the digit 0), the second and third A-N, P-Z or 0-9 (digits in current use), the fourth and fifth digits;
- `yy` the last two digits of the nominal year the DIN was assigned;
- `nnnnnn` the sequence number within that year for the FIN.

A bar code carries two flag characters after it (`ff`: 0-9, A-H, J-N, P, R-Y; `00` when unused). The label prints
the DIN in eye-readable text with the flags and then a boxed keyboard-entry check character, computed with
ISO/IEC 7064 MOD 37-2 over the 13 DIN characters (not the flags): each character's value (0-9 -> 0-9, A-Z ->
10-35) is summed recursively, `sum = (sum + value) * 2 mod 37`, and the check value is `(38 - sum) mod 37`,
written with the character set `0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*` (so the check character can be `*`).
Flags 60-96 are the "type 3" flags: the same check value plus 60, in the bar code instead of a process flag.

What `parse_din` accepts:
- typed: the 13 DIN characters, optionally followed by the 2 flag characters, then the check character:
  13, 14 (DIN + check), 15 (DIN + flags) or 16 (DIN + flags + check) characters;
- scanned: the bar code's data, `=` followed by the 13 DIN characters and the 2 flags (optionally the check
  character typed after it);
- spaces and tabs anywhere are ignored (`W1234 26 123456 00 7` and `W123426123456007` are the same), and lower-case
  letters are read as capitals (a DIN has none).

`require_check` (the default) refuses a typed DIN without its check character; a scan needs none (the bar code
has its own check), but a check character or type 3 flags, typed or scanned, are always verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"  # ISO/IEC 7064 MOD 37-2: the value of a character is its index
_FIN_FIRST = frozenset("ABCDEFGHIJKLMNPQRSTUVWXYZ123456789")  # A-N, P-Z, 1-9
_FIN_ALNUM = frozenset("ABCDEFGHIJKLMNPQRSTUVWXYZ0123456789")  # A-N, P-Z, 0-9
_DIGITS = frozenset("0123456789")
_FLAGS = frozenset("0123456789ABCDEFGHJKLMNPRSTUVWXY")  # 0-9, A-H, J-N, P, R-Y
_TYPE3 = range(60, 97)  # flags 60-96: 60 + the MOD 37-2 check value

Rule = Literal["din_format", "din_check_character"]


class DinError(ValueError):
    """A DIN refused: `rule` is din_format or din_check_character; `position` the 1-based character (after
    spaces and a leading '=' are removed) when one is at fault; `expected` the right check character when the
    given one is wrong. `errors` is the same problem as the list a 422 carries."""

    def __init__(self, rule: Rule, detail: str, position: int | None = None, expected: str | None = None) -> None:
        self.rule: Rule = rule
        self.detail = detail
        self.position = position
        self.expected = expected
        super().__init__(detail)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [{"line": None, "column": self.position, "field": "din", "rule": self.rule, "detail": self.detail}]


@dataclass(frozen=True, slots=True)
class DIN:
    facility: str  # the FIN, 5 characters
    year: str  # 2 digits
    sequence: str  # 6 digits
    flags: str | None  # the 2 flag characters when given
    check: str | None  # the verified check character: typed, or carried by type 3 flags; None when neither

    def __str__(self) -> str:
        return f"{self.facility}{self.year}{self.sequence}"

    @property
    def grouped(self) -> str:
        """As a label prints it: `W1234 26 123456`."""
        return f"{self.facility} {self.year} {self.sequence}"


def _value(c: str) -> int:
    return CHARSET.index(c)


def _checksum(din13: str) -> int:
    total = 0
    for c in din13:
        total = ((total + _value(c)) * 2) % 37
    return (38 - total) % 37


def _show(c: str) -> str:
    return repr(c) if c.isprintable() and c.strip() else f"U+{ord(c):04X}"


def _check_din13(din: str, shown: str) -> None:
    """The 13 DIN characters, position by position; DinError names the first wrong one and the part it is in."""
    parts = ((1, "is the first character of the facility identification number", _FIN_FIRST,
              "a letter A-N or P-Z or a digit 1-9"),
             (2, "is in the facility identification number", _FIN_ALNUM, "a letter A-N or P-Z or a digit"),
             (3, "is in the facility identification number", _FIN_ALNUM, "a letter A-N or P-Z or a digit"),
             (4, "is in the facility identification number", _DIGITS, "a digit"),
             (5, "is in the facility identification number", _DIGITS, "a digit"),
             (6, "is in the year", _DIGITS, "a digit"), (7, "is in the year", _DIGITS, "a digit"),
             *((p, "is in the sequence number", _DIGITS, "a digit") for p in range(8, 14)))
    for position, part, allowed, want in parts:
        c = din[position - 1]
        if c not in allowed:
            hint = ""
            if c == "O":
                hint = " (the letter O is not used in a DIN)" if position == 1 else " (the letter O: is it a zero?)"
            elif c == "0" and position == 1:
                hint = " (a DIN never starts with 0)"
            elif c == "I" and allowed is _DIGITS:
                hint = " (the letter I: is it a one?)"
            raise DinError("din_format", f"DIN {shown!r}: character {position} ({_show(c)}) {part} and must be "
                                         f"{want}{hint}", position)


def _normalise(text: str) -> tuple[str, bool]:
    s = "".join(text.split()).upper()
    return (s[1:], True) if s.startswith("=") else (s, False)


def check_character(din13: str) -> str:
    """The ISO/IEC 7064 MOD 37-2 keyboard-entry check character of a 13-character DIN (spaces ignored)."""
    din, scanned = _normalise(din13)
    if scanned or len(din) != 13:
        raise DinError("din_format", f"{din13!r} is not a 13-character DIN (facility 5, year 2, sequence 6)")
    _check_din13(din, din13.strip())
    return CHARSET[_checksum(din)]


def parse_din(text: str, *, require_check: bool = True) -> DIN:
    """The DIN a site typed or scanned (see the module docstring for the forms accepted); DinError otherwise."""
    shown = text.strip()
    if not shown:
        raise DinError("din_format", "no DIN given")
    s, scanned = _normalise(text)
    for i, c in enumerate(s, start=1):
        if c not in CHARSET:
            raise DinError("din_format", f"DIN {shown!r}: character {i} ({_show(c)}) cannot be in a DIN; only "
                                         "letters, digits and the check character '*' can", i)
    lengths = (15, 16) if scanned else (13, 14, 15, 16)
    if len(s) not in lengths:
        if scanned:
            want = "a scan is '=' then 15 characters: the 13-character DIN and 2 flag characters"
        else:
            want = ("a DIN is 13 characters (facility 5, year 2, sequence 6), followed by the check character (14), "
                    "the 2 flag characters (15), or both (16)")
        raise DinError("din_format", f"DIN {shown!r} has {len(s)} characters after removing spaces"
                                     f"{' and the leading =' if scanned else ''}; {want}")
    din = s[:13]
    _check_din13(din, shown)
    flags = s[13:15] if len(s) >= 15 else None
    given = s[-1] if len(s) in (14, 16) else None
    value = _checksum(din)
    expected = CHARSET[value]
    grouped = f"{din[:5]} {din[5:7]} {din[7:]}"
    if flags is not None:
        for offset, c in enumerate(flags):
            if c not in _FLAGS:
                raise DinError("din_format", f"DIN {shown!r}: flag character {offset + 1} ({_show(c)}) must be a digit "
                                             "or a letter A-H, J-N, P or R-Y", 14 + offset)
    carried: str | None = None
    if flags is not None and flags.isdigit() and int(flags) in _TYPE3:
        if int(flags) - 60 != value:
            raise DinError("din_check_character",
                           f"DIN {grouped}: the flag characters {flags} do not carry the DIN's check value; a "
                           "character of the DIN or of its flags is wrong: read the label again", 14, CHARSET[value])
        carried = expected
    if given is not None and given != expected:
        raise DinError("din_check_character",
                       f"DIN {grouped}: check character {given!r} does not match the DIN as entered: a character "
                       "of the DIN or the check character is mistyped; read the label again (the message never "
                       "gives the right check character, so that it is not copied instead)", len(s), expected)
    check = given or carried
    if check is None and require_check and not scanned:
        raise DinError("din_check_character",
                       f"DIN {grouped}: the check character is missing; type the boxed character printed after "
                       "the DIN on the label")
    return DIN(din[:5], din[5:7], din[7:], flags, check)


def keyed(din: DIN) -> str:
    """The DIN with its check character, as culturectl stores and compares it (e.g. W1234261234567)."""
    return f"{din}{check_character(str(din))}"
