import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory):
    """A briefly trained digits ViT saved as a model dir (shared by tests that need trained weights)."""
    from slimformer.tasks import digits

    out = tmp_path_factory.mktemp("models") / "digits"
    digits.train(out=out, epochs=2)
    return out


@pytest.fixture(scope="session")
def bible_pairs():
    """The English-Spanish verse pairs extracted from the real SWORD modules once per session (~11 s),
    bypassing the user cache so the parser itself is tested. Skips where the Debian packages are absent."""
    import shutil

    from slimformer.data import bible

    if shutil.which("diatheke") is None:
        pytest.skip(f"needs the Debian packages: apt-get install {bible.PACKAGES}")
    return bible.extract_pairs()
