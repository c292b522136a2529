import pytest
import torch

from tests.encoders.tiny_models import make_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
