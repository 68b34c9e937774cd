import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny test models run on one thread: a second thread gains nothing at toy sizes, and on a shared
    machine a descheduled OpenMP thread stalls every op at its barrier (measured 0.3 s -> 37 s).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
