"""A target stream that goes wrong part-way, and plain against monitored online adaptation on it.

The stream is the target's test split in order, with its middle third (`segment`) made degenerate:

    silent     audio and vision go silent (zeros): two sensors fail
    constant   every clip of the segment is one clip repeated (a frozen feed)
    skewed     a burst of the most positive clips (a quarter of the segment's length, repeated): a label-skewed
               stretch with inputs that look normal

`compare` runs the source model, plain online adaptation (`tta.modes.adapt_online`) and the monitored one
(`tta.monitor`, thresholds from the source's validation split) on the same stream with the same keys, and
scores each segment; the labels are read only to score. `compare_episodic` does the same for episodic
adaptation (each sample on its own) and its per-sample rule.
"""

from __future__ import annotations

import numpy as np

from jaxemo.data import sources
from jaxemo.systems import casp
from jaxemo.tta import core, modes, monitor

DEGENERATE = ("silent", "constant", "skewed")
SEGMENTS = ("before", "degenerate", "after")


def make_stream(test: dict, kind: str, segment: tuple = (1 / 3, 2 / 3), batch_size: int = 1) -> tuple[dict, dict]:
    """(stream arrays, {segment name: slice}) from the target's test arrays; the degenerate segment's ends are
    rounded to whole batches of `batch_size`, so that every batch is clean or degenerate."""
    if kind not in DEGENERATE:
        raise ValueError(f"degenerate segment {kind!r}: expected one of {DEGENERATE}")
    n = len(test["label"])
    a, b = (int(round(n * f / batch_size)) * batch_size for f in segment)
    if not 0 < a < b < n:
        raise ValueError(f"segment {segment} of a {n}-sample stream leaves a part empty")
    stream = {k: np.array(v) for k, v in test.items()}
    if kind == "silent":
        for m in ("audio", "vision"):
            stream[m][a:b] = 0
    elif kind == "constant":
        for k in stream:
            stream[k][a:b] = test[k][a]
    else:
        burst = np.argsort(-np.asarray(test["label"]), kind="stable")[: max(1, (b - a) // 4)]
        rows = np.resize(burst, b - a)
        for k in stream:
            stream[k][a:b] = np.asarray(test[k])[rows]
    return stream, dict(zip(SEGMENTS, (slice(0, a), slice(a, b), slice(b, n))))


def _setup(config, params: dict, learning_rate: float):
    model = casp.build_model(config)
    frozen, adapted = core.split(params, tuple(config.tta.adapted))
    method = casp.make_method("casp", config)
    optimizer = core.OptimizerConfig(learning_rate, config.tta.clip_norm)
    valid = modes.stack_source(sources.make_sources(config.data, config.seed)[1])  # the source's validation
    return model, frozen, adapted, method, optimizer, valid


def _scored(predictions: dict, stream: dict, segments: dict, **rest) -> dict:
    labels = np.asarray(stream["label"])
    mae = {run: {name: float(np.abs(p[s] - labels[s]).mean()) for name, s in segments.items()}
           for run, p in predictions.items()}
    return {"mae": mae, "predictions": predictions, "segments": segments, "labels": labels, **rest}


def compare(config, params: dict, test: dict, kind: str, *, learning_rate: float, steps: int, rng,
            monitor_config: monitor.MonitorConfig = monitor.MonitorConfig(), batch_size=None) -> dict:
    """Source, plain online and monitored online CASP (stage 1's contrastive loss) on the degenerate stream:
    {"mae": {run: {segment: MAE}}, "predictions", "audit", "thresholds", "segments", "batch_size"}."""
    model, frozen, adapted, method, optimizer, valid = _setup(config, params, learning_rate)
    batch_size = batch_size or config.tta.batch_size
    thresholds, source_stats = monitor.calibrate(method, model, frozen, adapted, valid, batch_size, rng, steps,
                                                 optimizer, monitor_config)
    stream, segments = make_stream(test, kind, batch_size=batch_size)
    inputs = {k: v for k, v in stream.items() if k in core.INPUT_KEYS}
    n = len(stream["label"])
    source = modes.predict_batches(model, frozen, adapted, modes.batched(inputs, batch_size))
    predictions = {
        "source": modes.unbatch(source, n),
        "plain": modes.adapt_online(method, model, frozen, adapted, inputs, batch_size, rng, steps, optimizer)[0]}
    predictions["monitored"], _, audit = monitor.adapt_online_monitored(
        method, model, frozen, adapted, inputs, batch_size, rng, thresholds, source_stats, steps, optimizer,
        monitor_config.reset_to)
    return _scored(predictions, stream, segments, audit=audit, thresholds=thresholds, batch_size=batch_size)


def compare_episodic(config, params: dict, test: dict, kind: str, *, learning_rate: float, steps: int, rng,
                     monitor_config: monitor.MonitorConfig = monitor.MonitorConfig()) -> dict:
    """The same stream, each sample adapted on its own (`config.tta.episodic_views` views, `steps` steps): the
    source model, plain episodic adaptation and the monitored one (`monitor.episodic_predict_monitored`,
    thresholds from the source's validation samples); `compare`'s keys, the audit per sample."""
    model, frozen, adapted, method, optimizer, valid = _setup(config, params, learning_rate)
    episodic = modes.EpisodicConfig(steps, int(config.tta.episodic_views), optimizer)
    size = int(config.tta.episodic_batch)
    thresholds, source_stats = monitor.calibrate_episodic(method, model, frozen, adapted, valid, rng, episodic,
                                                          size, monitor_config)
    stream, segments = make_stream(test, kind)
    inputs = {k: v for k, v in stream.items() if k in core.INPUT_KEYS}
    n = len(stream["label"])
    source = modes.predict_batches(model, frozen, adapted, modes.batched(inputs, config.tta.batch_size))
    predictions = {"source": modes.unbatch(source, n),
                   "plain": modes.episodic_predict(method, model, frozen, adapted, inputs, rng, episodic, size)}
    predictions["monitored"], audit = monitor.episodic_predict_monitored(
        method, model, frozen, adapted, inputs, rng, thresholds, source_stats, episodic, size)
    return _scored(predictions, stream, segments, audit=audit, thresholds=thresholds, batch_size=1)


def batch_errors(predictions: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
    """Mean absolute error per batch of the stream (the last batch's real rows only)."""
    n = len(labels)
    return np.array([np.abs(predictions[i:i + batch_size] - labels[i:i + batch_size]).mean()
                     for i in range(0, n, batch_size)])
