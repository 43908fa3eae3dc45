"""Mistakes in the model name, its options or the input size are refused before any data
is opened or prepared (issue 14, defect 12): a D4 preparation takes minutes, a typo
should not wait for it. The dataset here is one that would have to be prepared from a
manual folder that does not exist, so reaching the data layer would fail differently."""

import pytest

from cxrjax.train.config import TrainConfig
from cxrjax.train.run_setup import RunSetupError, setup_run


def config(**changes):
    return TrainConfig(
        dataset="image_folder", manual_dir="/nonexistent/folder", data_dir="/nonexistent/data", progress=False
    ).replace(**changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "lenet6"}, "unknown model 'lenet6'; registered models"),
        ({"model": "s4_exp4", "image_size": 8}, "image_size 8 is too small for 's4_exp4'"),
        ({"model": "lenet5", "model_options": {"widht": 3}}, "has no option"),
        ({"model": "lenet5", "channels": 2}, "channels must be 1 or 3"),
    ],
)
def test_model_mistakes_are_refused_before_the_data(changes, message):
    with pytest.raises(RunSetupError, match=message):
        setup_run(config(**changes))
