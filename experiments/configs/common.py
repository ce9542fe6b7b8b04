"""Settings every experiment shares; each recipe's config file starts from `base_config()`."""

from ml_collections import config_dict


def parse_variant(arg: str | None, allowed: tuple[str, ...]) -> str:
    variant = arg or allowed[0]
    if variant not in allowed:
        raise ValueError(f"config variant {variant!r} is unknown; expected one of {allowed}")
    return variant


def base_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.seed = 0
    config.total_steps = 0  # when > 0 it replaces num_epochs as the length of the run
    config.steps_per_epoch = 0  # when > 0 an epoch is this many steps, not one pass over the training set
    # Mesh axes data x fsdp x tensor; -1 takes all remaining devices.
    config.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # On a CPU: its cores as this many XLA devices (0: one per core; 1: one device using every core through
    # XLA's threads). Applied by `python -m experiments.<name>` before JAX starts; accelerators unaffected.
    config.host_devices = 1
    # Real datasets are read through TFDS from files the user provides (see README, "Real data").
    config.data = config_dict.ConfigDict(dict(name="", manual_dir="", data_dir=""))
    config.frozen_dtype = "float32"  # "bfloat16" keeps frozen weights in bf16
    config.data_workers = 0  # grain worker processes
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.max_consecutive_nonfinite = 10  # stop with an error after this many skipped updates in a row
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    # The best evaluation by `best.metric` ("" = none) is kept (checkpoints_best/); `best.patience` > 0 stops
    # a run after that many evaluations without an improvement larger than `best.min_delta`.
    config.best = config_dict.ConfigDict(dict(metric="", mode="max", min_delta=0.0, patience=0))
    # Extra logical-axis rules, ahead of jaxemo.train.sharding.DEFAULT_RULES, e.g. (("embed", None),). With
    # mesh.fsdp > 1, a parameter of at least `min_sharded_size` elements left replicated is an error.
    config.sharding = config_dict.ConfigDict(dict(rules=(), min_sharded_size=1 << 20))
    # Population training (jaxemo.train.population): trials per group (0: as many as fit `memory_fraction` of
    # the device memory by XLA's estimate); `read_threads` grain threads per trial's reader (0: none).
    config.population = config_dict.ConfigDict(dict(group_size=0, memory_fraction=0.7, read_threads=0))
    return config
