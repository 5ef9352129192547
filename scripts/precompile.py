"""Import (and touch once) what FinNeX processes load, with bytecode writing on.

Where PYTHONDONTWRITEBYTECODE is set (as on these machines) nothing imported is cached as .pyc,
so every process, each Dagster run and test worker included, compiles its imports again: a
single-ticker pipeline run measured ~12 s of CPU compiling torch._dynamo (first loaded by
creating an optimizer), sympy, plotly's figure classes, SQLAlchemy, MLflow and scikit-learn.
set-up runs this once with the variable unset; later processes read the cached bytecode.
"""

import warnings

warnings.simplefilter("ignore")

import arch.bootstrap  # noqa: E402,F401
import dagster as dg  # noqa: E402
import git  # noqa: E402,F401  (MLflow records the commit)
import hypothesis  # noqa: E402,F401  (tests)
import mlflow.pyfunc  # noqa: E402,F401
import mlflow.pytorch  # noqa: E402,F401
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import statsmodels.api  # noqa: E402,F401
import torch  # noqa: E402
from plotly.offline import get_plotlyjs  # noqa: E402,F401
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402,F401

import finnex_assets.cli  # noqa: E402,F401
import finnex_assets.definitions  # noqa: E402,F401
import finnex_ml  # noqa: E402,F401

torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())  # loads torch._dynamo (and sympy)
# the figure types the reports draw, with the default template (whose classes load on first use)
fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1]), go.Bar(x=[0], y=[1]), go.Heatmap(z=[[0, 1]])])
fig.update_layout(title="x").to_html(include_plotlyjs=False)
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
dg.materialize([dg.asset(lambda: 1, name="warm")], instance=dg.DagsterInstance.ephemeral(), run_config=quiet)
HistGradientBoostingClassifier(max_iter=2).fit(np.arange(20.0).reshape(10, 2), np.arange(10) % 2)
