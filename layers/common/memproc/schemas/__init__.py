"""API shapes: what clients send (requests) and what they get back (responses)."""
