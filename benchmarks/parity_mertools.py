"""Parity of `jaxemo.convert.mertools` + `MERToolsAttention` against MERTools' own modules (not a twin).

    python -m benchmarks.parity_mertools --mertools /path/to/MERTools/MER2024

imports `toolkit/models/attention.py` (`Attention`) and `toolkit/models/attention_topn.py` (`Attention_TOPN`)
from the user's MERTools clone, builds them with MERTools' own args (`feat_type` utt, frm_align,
frm_unalign; MER2024's output_dim1 = 6, output_dim2 = 0; hidden_dim 128, its default search's middle value)
and torch's random initialisation plus N(0, 0.05^2) noise (`--noise`; the logits are then ~0.1-0.2),
saves each state dict with torch.save, converts the file with `jaxemo.convert.mertools.
load_mertools_checkpoint` (jaxemo's fusion order audio, video, text against MERTools' audio, text, video;
TOPN's encoders in a shuffled order) and prints, per case, the largest absolute logit, and the largest
absolute difference of the logits (and of the fused features) between MERTools' forward and jaxemo's.
Frame-level inputs are front-padded for MERTools, as its loader pads them (`toolkit/utils/read_data.py`),
and end-padded with masks for jaxemo, run with `lstm_front_padding=True` (the converter's `model_fields`);
one more case runs jaxemo's default masked LSTM on full-length sequences. Exits 1 if a logit difference
exceeds 1e-5 x max(1, the case's largest |logit|): 1e-5 absolute at the default scale; a larger `--noise`
blows the logits up (the 5120-wide text layer, the raw fusion weights: ~30 at 0.1, ~6e4 at 0.2) and float32
rounding with them, so the bound is relative there (the `rel.` column: difference / largest |logit|).

Only the two model files (and `modules/encoder.py`, which they import) are loaded: they are imported under a
private package name, so MERTools' `toolkit/models/__init__.py`, which imports every model of the toolkit and
their dependencies, does not run. MERTools' forward ends with `interloss = torch.tensor(0).cuda()`, which a
CPU-only torch cannot run: where CUDA is unavailable, `torch.Tensor.cuda` returns the tensor itself, and
only while MERTools' forward runs (`cuda_as_identity`). Nothing else of MERTools is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import types
import warnings

import numpy as np

PACKAGE = "_mertools_models"  # the private package name MERTools' toolkit/models is imported under
TOLERANCE = 1e-5
UTT_DIMS = {"audio": 1024, "text": 5120, "video": 768}  # MER2024 top1: HuBERT-large, Baichuan-13B, CLIP-large
FRAME_DIMS = {"audio": 64, "text": 96, "video": 48}  # frame-level cases: smaller, so the LSTMs run fast
SOURCES = (("hubert", "audio"), ("clip", "video"), ("baichuan", "text"))  # jaxemo's order <- MERTools' slots


def import_mertools(root: str) -> tuple[type, type]:
    """(Attention, Attention_TOPN) from `root`, a MERTools clone's MER2024 folder."""
    models_dir = os.path.join(os.path.abspath(root), "toolkit", "models")
    for name in ("attention.py", "attention_topn.py", os.path.join("modules", "encoder.py")):
        if not os.path.isfile(os.path.join(models_dir, name)):
            sys.exit(f"--mertools {root}: no toolkit/models/{name} there (expected a MERTools clone's MER2024 "
                     f"folder)")
    package = types.ModuleType(PACKAGE)
    package.__path__ = [models_dir]  # `from .modules.encoder import ...` resolves inside it
    sys.modules[PACKAGE] = package
    attention = importlib.import_module(f"{PACKAGE}.attention")
    topn = importlib.import_module(f"{PACKAGE}.attention_topn")
    return attention.Attention, topn.Attention_TOPN


@contextlib.contextmanager
def cuda_as_identity(torch):
    """MERTools' `torch.tensor(0).cuda()` on a CPU-only torch: Tensor.cuda returns the tensor, for this block."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def mertools_args(**fields) -> argparse.Namespace:
    """MERTools' args as main-release.py hands them to the model (MER2024: 6 emotions, no valence output)."""
    return argparse.Namespace(output_dim1=6, output_dim2=0, dropout=0.3, hidden_dim=128, grad_clip=-1.0, **fields)


def frame_batch(rng, dims: dict, steps: dict, batch: int):
    """(jaxemo's end-padded features and masks, MERTools' front-padded ones) of random lengths."""
    from jaxemo.models import agt

    features, masks, front = {}, {}, {}
    for slot, dim in dims.items():
        lengths = rng.integers(1, steps[slot] + 1, batch)
        lengths[0] = steps[slot]  # one full-length sample
        mask = np.asarray(agt.lengths_to_mask(lengths, steps[slot]))
        x = rng.standard_normal((batch, steps[slot], dim)).astype(np.float32)
        features[slot], masks[slot] = np.where(mask[..., None], x, 0.0).astype(np.float32), mask
        front[slot] = np.asarray(agt.front_pad(features[slot], mask))
    return features, masks, front


def perturb(torch, net, scale: float, seed: int):
    """Adds N(0, scale^2) noise to every weight of `net` (torch's init alone gives logits of ~0.05)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in net.parameters():
            value.add_(scale * torch.randn(value.shape, generator=generator))
    return net


def compare(torch, net, batch: dict, path: str, sources, features: dict, masks, front_padding=None) -> tuple:
    """(max |logit|, max |logit diff|, max |fused feature diff|): MERTools' forward against the converted
    jaxemo model."""
    import jax

    from jaxemo.convert import mertools
    from jaxemo.models import agt

    torch.save(net.state_dict(), path)
    params, info = mertools.load_mertools_checkpoint(path, sources)
    fields = dict(info["model_fields"])
    if front_padding is not None:
        fields["lstm_front_padding"] = front_padding
    with torch.no_grad(), cuda_as_identity(torch):
        t_features, t_logits, _, _ = net({k: torch.from_numpy(np.array(v, np.float32)) for k, v in batch.items()})
    model = agt.MERToolsAttention(**fields, dropout=0.3)
    with jax.default_matmul_precision("highest"):
        logits, aux = jax.jit(model.apply)({"params": params}, features, masks)
    return (float(np.max(np.abs(t_logits.numpy()))), float(np.max(np.abs(np.asarray(logits) - t_logits.numpy()))),
            float(np.max(np.abs(np.asarray(aux["features"]) - t_features.numpy()))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity_mertools",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--mertools", required=True, help="a MERTools clone's MER2024 folder (holding toolkit/)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.05, help="N(0, noise^2) added to torch's random init")
    args = parser.parse_args(argv)

    import torch

    warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # MER2024's empty fc_out_2

    Attention, AttentionTopN = import_mertools(args.mertools)
    rng = np.random.default_rng(args.seed)
    names = {slot: name for name, slot in SOURCES}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state_dict.pth")

        def attention(feat_type, dims):
            torch.manual_seed(args.seed)
            net = Attention(mertools_args(audio_dim=dims["audio"], text_dim=dims["text"], video_dim=dims["video"],
                                          feat_type=feat_type))
            return perturb(torch, net, args.noise, args.seed).eval()

        x = {slot: rng.standard_normal((args.batch, d)).astype(np.float32) for slot, d in UTT_DIMS.items()}
        batch = {slot + "s": v for slot, v in x.items()}
        rows.append(("Attention, utt (dims 1024/5120/768)",
                     *compare(torch, attention("utt", UTT_DIMS), batch, path, SOURCES,
                              {names[s]: v for s, v in x.items()}, None)))
        for feat_type, steps in (("frm_align", {"audio": 12, "text": 12, "video": 12}),
                                 ("frm_unalign", {"audio": 20, "text": 9, "video": 14})):
            features, masks, front = frame_batch(rng, FRAME_DIMS, steps, args.batch)
            rows.append((f"Attention, {feat_type} (front-padded; lstm_front_padding=True)",
                         *compare(torch, attention(feat_type, FRAME_DIMS), {s + "s": v for s, v in front.items()},
                                  path, SOURCES, {names[s]: v for s, v in features.items()},
                                  {names[s]: v for s, v in masks.items()})))
        full = {s: rng.standard_normal((args.batch, 10, d)).astype(np.float32) for s, d in FRAME_DIMS.items()}
        ones = {names[s]: np.ones(v.shape[:2], bool) for s, v in full.items()}
        rows.append(("Attention, frm_align, full length (masked LSTM, jaxemo's default)",
                     *compare(torch, attention("frm_align", FRAME_DIMS), {s + "s": v for s, v in full.items()},
                              path, SOURCES, {names[s]: v for s, v in full.items()}, ones, front_padding=False)))

        dims = [1024, 768, 5120, 512, 256]
        torch.manual_seed(args.seed)
        net = AttentionTopN(mertools_args(audio_dim=dims, text_dim=None, video_dim=None))
        net = perturb(torch, net, args.noise, args.seed).eval()
        order = [3, 0, 4, 1, 2]  # jaxemo's fusion order of TOPN's encoders
        sources = [(f"f{k}", f"encoder{k}") for k in order]
        feats = {f"feat{k}": rng.standard_normal((args.batch, d)).astype(np.float32)
                 for k, d in enumerate(dims)}
        ours = {f"f{k}": feats[f"feat{k}"] for k in order}
        rows.append((f"Attention_TOPN, 5 features (encoders in the order {order})",
                     *compare(torch, net, feats, path, sources, ours, None)))

    print(f"MERTools: {os.path.abspath(args.mertools)}; torch {torch.__version__}; batch {args.batch}, "
          f"seed {args.seed}, weight noise {args.noise}; jaxemo order {[n for n, _ in SOURCES]} <- MERTools "
          f"slots {[s for _, s in SOURCES]}")
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  max |logit|  max |logit diff|       rel.  max |feature diff|")
    for case, logit, logit_diff, feature_diff in rows:
        relative = logit_diff / logit
        print(f"{case:<{width}}  {logit:11.3f}  {logit_diff:16.3e}  {relative:9.2e}  {feature_diff:18.3e}")
    ok = all(diff <= TOLERANCE * max(1.0, logit) for _, logit, diff, _ in rows)
    worst = max(r[2] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'}: largest logit difference {worst:.3e} (tolerance {TOLERANCE} x max(1, "
          f"largest |logit|))")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
