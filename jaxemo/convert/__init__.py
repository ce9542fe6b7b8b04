"""PyTorch checkpoints -> jaxemo params (plain nested dicts of numpy arrays).

- `torch_state`: the one checkpoint loader (`load_state_dict(path)`, `read_checkpoint(path)`). It reads
  `torch.save` files (`.pth` / `.pt` / `.bin`, zip or legacy format) with `torch.load(weights_only=True)`,
  TorchScript archives (the scripted module's state dict), `.safetensors` files and Hugging Face model
  directories, telling them apart by content. Saved dicts may carry plain containers, numbers, strings and
  `argparse.Namespace` beside the weights; the state dict is the entry named by `key`, else "state_dict",
  else "model", else the whole file; a `module.` (DataParallel / DDP) prefix is stripped. A pickled model or
  any other object is refused with the one-line command that re-saves its weights as a state dict.
- `common`: what the converters share: `StateDictReader` (key look-ups with errors naming the key), `to_numpy`,
  and the torch -> flax leaf layouts (`dense_params`, `norm_params`, `heads_in_params`, ...).
- one module per source layout: `vit`, `mae`, `clip`, `mma_dfer`, `casp`, `wav2vec2`, `uniemox` (a u-emo
  pretraining checkpoint: the MAE student, its decoder and the `att_fusion` fusion -> UniEmoX params, kind
  `uemo`), `mertools` (MERTools' MER2024 attention baseline <-> `MERToolsAttention`); `python -m
  jaxemo.convert` runs them on a file.
"""
