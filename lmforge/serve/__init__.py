"""Serving: an OpenAI-compatible HTTP server (app.py, protocol.py) on an engine that batches requests
continuously (engine.py), and a chat page (static/chat.html)."""
