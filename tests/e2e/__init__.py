"""End-to-end tests: simulators, drivers, a real uvicorn or `culturectl` process, PostgreSQL and Chromium."""
