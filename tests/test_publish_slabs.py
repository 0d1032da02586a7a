"""Publication of 3D arrays that grow slab by slab (layer volumes, projections): after the first
publication only the slabs that changed are written again, and what Tiled serves is the whole
new array."""
import time
import uuid

import numpy as np

from streaming.publish import TiledPublisher


def _wait(pub, n, timeout=30.0):
    t0 = time.time()
    while pub.published < n:
        assert time.time() - t0 < timeout and pub.last_error is None, pub.last_error
        time.sleep(0.05)


def test_only_the_changed_slabs_of_a_volume_are_written_again(tiled_server):
    client = tiled_server.client()
    uid = f"slabs-{uuid.uuid4().hex[:8]}"
    vol = np.full((4, 1024, 1024), np.nan, np.float32)          # 4 MB a layer: one layer a slab
    vol[0] = 1.0
    pub = TiledPublisher(client, uid, root="dfxrm", units={}, dims={}, min_interval_s=0.0)
    md = {"kind": "dfxrm-maps", "version": 1, "raw_uid": uid, "status": {"state": "live", "updated": 0}}
    pub.submit(md, {"v": vol})
    _wait(pub, 1)
    assert client["dfxrm"][uid]["v"].structure().chunks[0] == (1, 1, 1, 1)
    vol[1] = 2.0                                                   # the next layer is measured
    pub.submit(md, {"v": vol})
    _wait(pub, 2)
    assert pub.slabs_written == 1
    vol[1, 5, 7] = np.nan                                          # a NaN is a change too
    vol[3] = 4.0
    pub.submit(md, {"v": vol})
    _wait(pub, 3)
    assert pub.slabs_written == 3
    pub.submit(md, {"v": vol})                                     # nothing changed: nothing written
    _wait(pub, 4)
    assert pub.slabs_written == 3
    assert pub.close(md, {"v": vol})
    np.testing.assert_array_equal(client["dfxrm"][uid]["v"].read(), vol)
