"""InfoDCL pipeline: ingest, validate, metadata, train, evaluate and report for the KDD '26 InfoDCL recommender.

The library is plain Python + torch + scipy; Prefect flows live in `flows/` and only wire it.
"""
import os as _os

# Offline-safe: never wait on a telemetry host (set before any of these libraries is imported).
for _key, _value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                     "GX_ANALYTICS_ENABLED": "False", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
