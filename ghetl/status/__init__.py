"""Live status: `events` are the messages each status change publishes (what the circles show),
and `server` streams them to browsers and notebooks over a WebSocket."""
