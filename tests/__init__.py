"""The test suite: unit/ (pure logic), drivers/ (real simulators), db/ (real PostgreSQL), api/ (the app in
process), e2e/ (the whole service, processes and a browser)."""
