"""XGBoost and LightGBM behind one small surface: parameters, training rounds, margins, files.

Owns what differs between the two libraries: the booster parameters a job means
(the loss as the library's objective; threads, seed and, in a group, LightGBM's
network), which of `model.options` the library knows (asked of the library
itself) and which the orchestrator sets, the training matrix each builds from a
`TreeMatrix` (native categories and missing values; XGBoost's QuantileDMatrix),
training with a callback after every round, one round's raw margins, the model
file and its digest, and the importance of each feature (total gain).

Both train deterministically: XGBoost's `hist` and LightGBM's `deterministic`
with row-wise histograms. Continuing from a saved booster grows exactly the
trees the uninterrupted run grows, unless the options sample rows or columns
(`SAMPLING_OPTIONS`): both libraries restart their sampler's random stream when
training continues, so a resumed run is then equivalent, not identical.

Imports the libraries only when asked (`library`), naming the extra to install.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from orchestrator.data.matrix import TreeFeatures, TreeMatrix
from orchestrator.data.transforms import LabelStats
from orchestrator.errors import SpecError

EXTRA = "pip install -e '.[trees]'"
# Options that draw random rows or columns each round (see the module doc on resuming).
SAMPLING_OPTIONS = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode", "bagging_fraction",
                    "bagging_freq", "feature_fraction", "feature_fraction_bynode", "pos_bagging_fraction",
                    "neg_bagging_fraction")

OnRound = Callable[[Any, int], bool]  # (booster, round index) → stop now
Batches = Callable[[], Iterator[TreeMatrix]]  # a new pass over a shard's rows, a matrix per row group


def library(kind: str) -> "XGBoost | LightGBM":
    """The adapter for model.kind `kind`; SpecError naming the extra when the library is missing."""
    adapter = {"xgboost": XGBoost, "lightgbm": LightGBM}[kind]
    try:
        __import__(adapter.module)
    except ImportError:
        raise SpecError([f"model.kind: {kind} needs the {adapter.module} package, which is not installed here: "
                         f"{EXTRA}"]) from None
    return adapter()


def _unknown(options: dict, known: set[str], owned: dict[str, str], name: str) -> list[str]:
    problems = []
    for key in options:
        if key in owned:
            problems.append(f"model.options.{key}: set by the orchestrator from {owned[key]}")
        elif key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"model.options.{key}: not a parameter {name} knows{hint}")
    return problems


@dataclass(frozen=True)
class Objective:
    """The loss as a booster's objective: its parameters and how many margins a row gets."""

    params: dict[str, Any]
    margins: int


class XGBoost:
    """XGBoost's `train` with the hist method and native categories; the file is UBJSON."""

    module = "xgboost"
    model_file = "model.ubj"
    streams = True  # train_matrix takes a matrix per row group
    # What the job sets elsewhere, for each option the orchestrator owns.
    owned = {"objective": "loss", "num_class": "the label's classes", "nthread": "scaling.cpus_per_worker",
             "n_jobs": "scaling.cpus_per_worker", "seed": "train.seed", "random_state": "train.seed",
             "num_boost_round": "model.rounds", "n_estimators": "model.rounds",
             "early_stopping_rounds": "early_stopping.patience", "eval_metric": "the run's metrics"}
    defaults = {"tree_method": "hist"}

    def objective(self, loss: str, classes: int | None) -> Objective:
        """The objective and its margins per row for `loss`."""
        if loss == "cross_entropy":
            return Objective({"objective": "multi:softprob", "num_class": classes}, classes)
        name = {"mse": "reg:squarederror", "l1": "reg:absoluteerror", "bce": "binary:logistic"}[loss]
        return Objective({"objective": name}, 1)

    def check_options(self, options: dict, loss: str) -> list[str]:
        """One problem per option XGBoost does not know or the orchestrator sets, asked of XGBoost:
        it warns of the parameters a one-round training on a tiny matrix did not use."""
        import xgboost

        problems = _unknown(options, set(options), self.owned, "XGBoost")  # the owned ones
        free = {k: v for k, v in options.items() if k not in self.owned}
        classes = 2 if loss == "cross_entropy" else None
        params = {**self.defaults, **free, **self.objective(loss, classes).params, "nthread": 1}
        tiny = xgboost.DMatrix(np.arange(8.0).reshape(4, 2), label=np.array([0.0, 1.0, 0.0, 1.0]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                booster = xgboost.train(params, tiny, 1)
            except xgboost.core.XGBoostError as error:
                return problems + [f"model.options: XGBoost refuses them: {str(error).splitlines()[0]}"]
        unused = set()
        for warning in caught:
            text = str(warning.message)
            if "are not used" in text and "{" in text:
                unused |= {name.strip().strip('"') for name in text[text.index("{") + 1:text.index("}")].split(",")}
        known = set(_config_keys(booster.save_config()))
        return problems + _unknown({k: v for k, v in free.items() if k in unused}, known, {}, "XGBoost")

    def params(self, options: dict, objective: Objective, threads: int, seed: int, use_gpu: bool,
               world: int) -> dict:
        """The booster's parameters: ours, then the user's options over them, then the objective."""
        device = {"device": "cuda"} if use_gpu else {}
        return {**self.defaults, **device, "nthread": threads, "seed": seed, **options, **objective.params}

    def train_matrix(self, batches: Batches, features: TreeFeatures, params: dict):
        """A QuantileDMatrix (histogram bins, not a float copy) with native categories and NaN as missing,
        built from `batches` through XGBoost's iterator: the float rows are never all in memory at
        once (XGBoost reads them twice: to sketch the bins, then to fill them)."""
        import xgboost

        class Parts(xgboost.DataIter):
            def __init__(self) -> None:
                super().__init__(release_data=True)
                self.parts: Iterator[TreeMatrix] | None = None

            def next(self, input_data: Callable) -> bool:
                if self.parts is None:
                    self.parts = batches()
                part = next(self.parts, None)
                if part is None:
                    return False
                input_data(data=part.features, label=part.labels, feature_names=list(features.names),
                           feature_types=_types(features))
                return True

            def reset(self) -> None:
                self.parts = None

        return xgboost.QuantileDMatrix(Parts(), enable_categorical=True, max_bin=int(params.get("max_bin", 256)),
                                       nthread=params["nthread"])

    def train(self, params: dict, matrix, rounds: int, start: bytes | None, on_round: OnRound):
        """Train up to `rounds` more rounds (after `start`'s, if given); `on_round` after each may stop."""
        import xgboost

        class AfterRound(xgboost.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log) -> bool:
                return on_round(model, epoch)

        return xgboost.train(params, matrix, num_boost_round=rounds, callbacks=[AfterRound()],
                             xgb_model=self.load(start) if start is not None else None, verbose_eval=False)

    def round_margins(self, booster, features: np.ndarray, round_index: int) -> np.ndarray:
        """The raw margins [rows] or [rows, classes] that round `round_index`'s trees add."""
        margins = booster.inplace_predict(features, iteration_range=(round_index, round_index + 1),
                                          predict_type="margin")
        return margins - self._base(booster)

    def margins(self, booster, features: np.ndarray) -> np.ndarray:
        """Every round's margins together, the base score included."""
        return booster.inplace_predict(features, predict_type="margin")

    def base_margin(self, booster, rows: int, width: int) -> np.ndarray:
        """The margin before any tree: the booster's base score."""
        base = self._base(booster)
        return np.broadcast_to(base, (rows, width) if width > 1 else (rows,)).astype(np.float64)

    @staticmethod
    def _base(booster) -> np.ndarray:
        learner = json.loads(booster.save_config())["learner"]  # once: it serializes the whole configuration
        base = np.array([float(v) for v in learner["learner_model_param"]["base_score"].strip("[]").split(",")],
                        np.float32)
        objective = learner["objective"]["name"]
        if objective == "binary:logistic":  # stored as a probability; margins are log-odds
            base = np.log(base / (1 - base))
        return base if len(base) > 1 else base[0]

    def to_bytes(self, booster) -> bytes:
        return bytes(booster.save_raw("ubj"))

    def load(self, data: bytes):
        import xgboost

        return xgboost.Booster(model_file=bytearray(data))

    def digest(self, booster) -> str:
        """sha256 of the model file: equal on every rank when the trees are."""
        return hashlib.sha256(self.to_bytes(booster)).hexdigest()

    def importance(self, booster, features: TreeFeatures) -> dict[str, float]:
        """Total gain of every feature's splits (0 for features never split on)."""
        scores = booster.get_score(importance_type="total_gain")
        return {name: float(scores.get(name, 0.0)) for name in features.names}


class LightGBM:
    """LightGBM's `train`, data-parallel across the group; the file is its text model."""

    module = "lightgbm"
    model_file = "model.txt"
    # train_matrix takes the shard as one matrix: continuing from a saved booster, LightGBM predicts
    # over its Dataset's raw data, which it cannot do over a list of matrices.
    streams = False
    owned = {"objective": "loss", "num_class": "the label's classes", "num_threads": "scaling.cpus_per_worker",
             "seed": "train.seed", "num_iterations": "model.rounds", "n_estimators": "model.rounds",
             "early_stopping_round": "early_stopping.patience", "metric": "the run's metrics",
             "machines": "the Ray Train group", "num_machines": "the Ray Train group",
             "local_listen_port": "the Ray Train group", "pre_partition": "the Ray Train group"}
    defaults = {"deterministic": True, "force_row_wise": True, "verbosity": -1}

    def objective(self, loss: str, classes: int | None) -> Objective:
        """The objective and its margins per row for `loss`."""
        if loss == "cross_entropy":
            return Objective({"objective": "multiclass", "num_class": classes}, classes)
        return Objective({"objective": {"mse": "regression", "l1": "regression_l1", "bce": "binary"}[loss]}, 1)

    def check_options(self, options: dict, loss: str) -> list[str]:
        """One problem per option LightGBM does not know (its parameters and their aliases) or the
        orchestrator sets (also under an alias)."""
        import lightgbm

        aliases = lightgbm.basic._ConfigAliases._get_all_param_aliases()
        canonical = {alias: name for name, names in aliases.items() for alias in [name, *names]}
        owned = {key: self.owned[canonical[key]] for key in options if canonical.get(key) in self.owned}
        owned.update({k: v for k, v in self.owned.items() if k in options})
        return _unknown(options, set(canonical), owned, "LightGBM")

    def params(self, options: dict, objective: Objective, threads: int, seed: int, use_gpu: bool,
               world: int) -> dict:
        """The booster's parameters: ours (and the group's network), the user's options, the objective."""
        params = {**self.defaults, **({"device_type": "cuda"} if use_gpu else {}), "num_threads": threads,
                  "seed": seed, **options, **objective.params}
        if world > 1:
            from ray.train.lightgbm import get_network_params

            params = {"tree_learner": "data_parallel", **params, "pre_partition": True, **get_network_params()}
        return params

    def train_matrix(self, batches: Batches, features: TreeFeatures, params: dict):
        """A Dataset with native categories and NaN as missing, from the one matrix `batches` yields;
        binned, and the floats freed, when training starts."""
        import lightgbm

        (data,) = batches()
        return lightgbm.Dataset(data.features, label=data.labels, feature_name=list(features.names),
                                categorical_feature=list(features.categorical) or "auto", free_raw_data=True,
                                params={k: v for k, v in params.items() if k in ("max_bin", "verbosity")})

    def train(self, params: dict, matrix, rounds: int, start: bytes | None, on_round: OnRound):
        """Train up to `rounds` more rounds (after `start`'s, if given); `on_round` after each may stop."""
        import lightgbm

        def after_round(env) -> None:
            if on_round(env.model, env.iteration):
                raise lightgbm.callback.EarlyStopException(env.iteration, [])

        return lightgbm.train(params, matrix, num_boost_round=rounds, callbacks=[after_round],
                              init_model=self.load(start) if start is not None else None)

    def round_margins(self, booster, features: np.ndarray, round_index: int) -> np.ndarray:
        """The raw margins [rows] or [rows, classes] that round `round_index`'s trees add."""
        return booster.predict(features, start_iteration=round_index, num_iteration=1, raw_score=True)

    def margins(self, booster, features: np.ndarray) -> np.ndarray:
        """Every round's margins together (LightGBM's first tree holds the starting score)."""
        return booster.predict(features, raw_score=True, num_iteration=booster.current_iteration())

    def base_margin(self, booster, rows: int, width: int) -> np.ndarray:
        """The margin before any tree: zero (LightGBM puts the average into its first tree)."""
        return np.zeros((rows, width) if width > 1 else (rows,))

    def to_bytes(self, booster) -> bytes:
        return booster.model_to_string(num_iteration=-1).encode()

    def load(self, data: bytes):
        import lightgbm

        return lightgbm.Booster(model_str=data.decode())

    def digest(self, booster) -> str:
        """sha256 of the trees (the text model before its parameters, which name each rank's port)."""
        return hashlib.sha256(self.to_bytes(booster).split(b"\nparameters:")[0]).hexdigest()

    def importance(self, booster, features: TreeFeatures) -> dict[str, float]:
        """Total gain of every feature's splits (0 for features never split on)."""
        return dict(zip(features.names, map(float, booster.feature_importance(importance_type="gain"))))


def network_outputs(margins: np.ndarray, label: LabelStats) -> torch.Tensor:
    """A booster's margins as a network of the same job would output them: regression standardized
    ([rows, 1], as networks train), classification logits ([rows, 1] for bce, [rows, classes])."""
    if label.task == "regression":
        return torch.from_numpy((np.asarray(margins, np.float64) - label.mean) / label.std).float().reshape(-1, 1)
    return torch.from_numpy(np.asarray(margins).reshape(len(margins), -1)).float()


def network_labels(labels: np.ndarray, label: LabelStats, loss: str) -> torch.Tensor:
    """`TreeMatrix` labels as the network losses read them: standardized regression targets, 0./1.
    for bce (NaN: none), class ids for cross_entropy (-1: none)."""
    if label.task == "regression":
        return torch.from_numpy((labels.astype(np.float64) - label.mean) / label.std).float()
    if loss == "bce":
        return torch.from_numpy(np.where(labels < 0, np.nan, labels).astype(np.float32))
    return torch.from_numpy(labels)


def _types(features: TreeFeatures) -> list[str]:
    return ["c" if count else "q" for count in features.categories]


def _config_keys(config: str) -> list[str]:
    """Every parameter name in an XGBoost configuration (JSON text)."""
    keys: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.append(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(config))
    return keys
