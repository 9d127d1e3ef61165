"""The dashboard at ``/ui``: static pages over the same /v1 API (app.web.routes)."""
