"""One router per area of the HTTP API."""
