"""ntkfuse.sharding: which devices `devices=` picks."""
import pytest

from ntkfuse import sharding
from tests.sharding.run import run_on_8_devices


def test_one_device_means_no_mesh():
    assert sharding.make_mesh("auto") is None      # the pytest process sees one CPU device
    assert sharding.make_mesh(None) is None
    assert sharding.make_mesh(1) is None


@pytest.mark.parametrize("bad", ["all", 0, 99, []])
def test_bad_devices(bad):
    with pytest.raises(sharding.ShardingError):
        sharding.make_mesh(bad)


def test_meshes_on_8_devices():
    run_on_8_devices("""
        import numpy as np
        from ntkfuse import sharding
        assert sharding.size(sharding.make_mesh("auto")) == 8
        assert sharding.size(sharding.make_mesh(4)) == 4
        assert sharding.make_mesh(1) is None and sharding.make_mesh(None) is None
        m = sharding.make_mesh(jax.devices()[2:5])
        assert list(m.devices) == jax.devices()[2:5]
        x = sharding.shard_rows({"a": np.arange(10.0)}, sharding.make_mesh(4))["a"]
        assert x.shape == (12,) and len(x.sharding.device_set) == 4
        np.testing.assert_array_equal(np.asarray(x), np.r_[np.arange(10.0), 0.0, 0.0])
    """)
