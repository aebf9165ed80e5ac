"""The scoring service: serves XGBoost models by use case from a versioned registry of model artifacts."""
