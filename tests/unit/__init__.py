"""Unit tests of pure logic: rules, state machines, formats; fakes only here."""
