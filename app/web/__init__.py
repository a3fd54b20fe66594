"""The operator dashboard: server-rendered pages (Jinja2), htmx fragments and uPlot charts over one SSE stream."""
