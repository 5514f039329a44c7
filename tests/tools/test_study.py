"""The study's table of PPO runs (`lit-instruct study`; its end-to-end run on a sweep is in test_pipeline.py)."""

import json

from lit_instruct.evaluation import HELD_OUT_METRICS
from lit_instruct.tools.study import gather


def test_the_study_reads_grouped_and_flat_coefficients(tmp_path):
    """Exports of grouped-settings runs (``hparams.kl.kl_coef``) and of runs from before (flat ``kl_coef``) both count."""
    metrics = {key: 0.5 for key in HELD_OUT_METRICS.values()}
    for name, hparams in (("grouped", {"kl": {"kl_coef": 0.2, "adaptive": True}, "ptx": {"ptx_coef": 1.0}}),
                          ("flat", {"kl_coef": 0.02, "ptx_coef": 0.0}),
                          ("defaults", {})):
        (tmp_path / name / "export").mkdir(parents=True)
        meta = {"stage": "ppo", "hparams": hparams, "metrics": metrics}
        (tmp_path / name / "export" / "lit_instruct.json").write_text(json.dumps(meta))
    rows = {r["run"]: r for r in gather(tmp_path)}
    assert (rows["grouped"]["kl_coef"], rows["grouped"]["ptx_coef"], rows["grouped"]["adaptive_kl"]) == (0.2, 1.0, True)
    assert (rows["flat"]["kl_coef"], rows["flat"]["ptx_coef"], rows["flat"]["adaptive_kl"]) == (0.02, 0.0, False)
    assert (rows["defaults"]["kl_coef"], rows["defaults"]["ptx_coef"]) == (0.02, 27.8)  # the module's defaults
