"""jaxemo's Flax Linen models, one file per model family, each with one factory:

    create(variant: str | None = None, **fields) -> nn.Module

`variant` names a preset where the model has named sizes or forms (`None`: the module's class defaults, the
paper's model); `fields` are the module's dataclass fields, overriding the preset's. A model file takes plain
Python values only: reading a recipe (an ml_collections config) into fields is its system's job
(`jaxemo/systems/`), and no Flax module is defined anywhere else (`jaxemo/vit.py` and `jaxemo/layers.py` aside).

    jaxemo.vit.create               "Ti/16", "S/16", "B/16", "L/14", "H/14", ... (ViT size / patch)
    mae.create                      the encoder's ViT variant ("B/16", ...); the decoder by its fields
    clip.create                     the image tower's ViT variant ("B/32", "B/16", "L/14")
    mma_dfer.create                 both encoders' ViT variant ("B/16", the paper's)
    msa.create                      "late" | "early" (CASP's two fusions)
    uniemox.create                  the student MAE's ViT variant, unless a `student` is given
    agt.create                      "agt" | "attention" (the model itself: AGT or the MERTools baseline)
    wav2vec2.create                 "base", "large", "hubert-base", "hubert-large", "tiny"; keyword-only
                                    `config` (a `Wav2Vec2Config`) and `num_labels`; `fields` replace the
                                    config's fields
    speech_classifier.create        the backbone's wav2vec2 preset; keyword-only `config`, `heads`,
                                    `normalize`; `fields` replace the backbone config's fields
"""
