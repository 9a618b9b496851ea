"""The DuckDB store: schema, writes, queries. The only package that imports duckdb."""
from negguide.results.store import CalibrationRecord, RunRecord, Store, default_db_path

__all__ = ["CalibrationRecord", "RunRecord", "Store", "default_db_path"]
