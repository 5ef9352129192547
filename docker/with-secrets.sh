#!/bin/sh
# Entrypoint of the finnex image: read the PostgreSQL password from the compose secret file into
# the environment of the command it runs (dagster.yaml reads DAGSTER_PG_PASSWORD; MLflow reads
# MLFLOW_BACKEND_STORE_URI), so the password is never on a command line (`ps`) nor in the
# container's configuration (`docker inspect`).
set -eu
secret="${POSTGRES_PASSWORD_FILE:-/run/secrets/postgres_password}"
if [ -r "$secret" ]; then
  DAGSTER_PG_PASSWORD="$(cat "$secret")"
  export DAGSTER_PG_PASSWORD
  # percent-encoded: a password with @ : / would otherwise break the URI
  quoted="$(python -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["DAGSTER_PG_PASSWORD"], safe=""))')"
  MLFLOW_BACKEND_STORE_URI="postgresql://${DAGSTER_PG_USER}:${quoted}@${DAGSTER_PG_HOST}:5432/mlflow"
  export MLFLOW_BACKEND_STORE_URI
fi
exec "$@"
