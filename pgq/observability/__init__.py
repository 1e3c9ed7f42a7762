"""What pgq tells operators about itself: Prometheus metrics (``metrics``, the only
module that imports ``prometheus_client``) and the small HTTP server that exposes them
with the health probes (``http``). Placed just above ``core`` so every layer that sees
an event (the client's enqueue, the worker's services, the outage log) can record it."""
