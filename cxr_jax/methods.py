"""The methods a config's `method` key selects: a trainer class and an evaluator for each."""

from cxr_jax.evaluate import classifier as classifier_eval
from cxr_jax.evaluate import convirt as convirt_eval
from cxr_jax.evaluate import dgm as dgm_eval
from cxr_jax.evaluate import ld as ld_eval
from cxr_jax.evaluate import segment as segment_eval
from cxr_jax.train import classifier, convirt, dgm, ld, segment

# name -> class built from (config, mesh), with train_data(), init(rng, batch), train_step(state, batch).
METHODS = {
    "classifier": classifier.Classifier,
    "convirt": convirt.ConVIRT,
    "dgm": dgm.DGM,
    "ld": ld.LD,
    "segment": segment.Segment,
}

# name -> evaluate(method, state, mesh, outdir) -> {metric name: number}, figures written to outdir.
EVALUATORS = {
    "classifier": classifier_eval.evaluate,
    "convirt": convirt_eval.evaluate,
    "dgm": dgm_eval.evaluate,
    "ld": ld_eval.evaluate,
    "segment": segment_eval.evaluate,
}
