"""`engine web`: the HTTP API (FastAPI on uvicorn) in front of the database.

Layout: app.py (the app factory, error bodies, body limit, /healthz, /metrics), deps.py (the
process's connection pool: the one place a route gets a connection), auth.py (the one
dependency that authenticates and authorises every /api/v1 route), models.py (bodies),
ingest.py (the one place the server reaches into the SDK's write path), routes/ (one module
per topic), mlflow.py (MLflow's tracking API under /mlflow, on the same access dependency and
ingest path), server.py (uvicorn, with a deadline for request headers).
"""
