"""An OpenAI-compatible HTTP server on one loaded guard: ``/v1/moderations``, guarded ``/v1/chat/completions``,
``/v1/models``, ``/health`` and ``/metrics`` (``loraguard-cli serve``; needs the ``serve`` extra).

``loraguard_cpp.server.app.create_app`` builds the ASGI app; ``command`` holds the CLI options and the run.
"""
