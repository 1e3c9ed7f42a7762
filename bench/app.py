"""The app the drain benchmark's workers run: one no-op task."""

import pgq

app = pgq.App.from_env()


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.anoop")
async def anoop() -> None:
    return None
