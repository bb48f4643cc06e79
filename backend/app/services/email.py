"""The plan's worker entry point: `arq app.services.email.WorkerSettings` (and `python -m app.services.email`).

The worker lives in `app.services.messaging.worker`; this name is kept so deployments keep working.
"""

from app.services.messaging.worker import WorkerSettings, run_worker

__all__ = ["WorkerSettings", "run_worker"]

if __name__ == "__main__":
    run_worker()
