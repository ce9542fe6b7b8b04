"""Benchmarking, in one home: the drivers (`python -m benchmarks.<name>`), what they share (`report`: measured
rows, tables, machine facts, the BENCHMARKS.md writer, plots; `population_timing`), the PyTorch twins that
tests and benchmarks compare jaxemo against (`twins/`), profiles (`profiles/`) and plots.

    steps          train / inference step throughput and MFU of any registered system (`--system`)
    gpu_suite      every GPU section of BENCHMARKS.md in one command, its runs read from the system registry
    pod_compile    every system's paper-size train step compiled for TPU pod topologies (AOT, on the CPU)
    tta_latency    test-time adaptation latency (CASP), casp_epoch: CASP's offline epoch against its reference
    population     many small trainings as one program against one at a time; fewshot: the few-shot SER trials
    agt_pipeline   AGT's MER-SEMI trainings; data_pipeline: building and reading a video dataset

Each system contributes its cases through `jaxemo.systems` (`SYSTEM.benchmark`, `SYSTEM.workloads`); the
drivers load recipe configs from `experiments.configs` and pass them in. The library's own run-time
measurement (FLOP rules, peak FLOP/s, memory, topologies) is `jaxemo.perf`.
"""
