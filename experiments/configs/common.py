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
    # Mesh axes data x fsdp x tensor; -1 takes all remaining devices.
    config.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Real datasets are read through TFDS from files the user provides (see README, "Real data").
    config.data = config_dict.ConfigDict(dict(name="", manual_dir="", data_dir=""))
    config.frozen_dtype = "float32"  # "bfloat16" keeps frozen weights in bf16
    config.data_workers = 0  # grain worker processes
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.max_consecutive_nonfinite = 10  # stop with an error after this many skipped updates in a row
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
    return config
