-- A second database in the same server for the MLflow tracking backend.
CREATE DATABASE mlflow;
