"""Database tests on a real PostgreSQL: migrations, writer and spool, history queries, audit chain."""
