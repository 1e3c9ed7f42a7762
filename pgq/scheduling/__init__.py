"""What runs only in the process that leads a role: ``service.LeaderService`` (campaign,
run while leader, resign on stop, fencing terms) and its subclasses, the cron
``scheduler`` and ``maintenance`` (retention). Stats refresh, metrics and alerts
belong here too. It may use the client, coordination, the store and the vocabulary;
the worker runs these services in-process.
"""
