import pytest


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow cache that load_dataset writes under the test's directory."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
