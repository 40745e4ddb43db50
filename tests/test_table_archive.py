"""Table archives: a crop table packed here and unpacked under another data root is the table a run there
looks for, with exact labels and crops within WebP error."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facemtl.data.mixed import FaceTable, TableSpec, build_table
from facemtl.data.table_archive import pack_table, unpack_table
from facemtl.errors import FacemtlError
from facemtl.train.config import RunConfig
from facemtl.train.trainer import table_specs


@pytest.fixture(scope="module")
def mtfl_table(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FaceTable, TableSpec]:
    """About 40 real MTFL training faces as 96x96 context crops (annotated landmarks, no detector needed)."""
    spec = TableSpec(str(data_dir), None, None, "training", limit=40)
    return build_table(spec, tmp_path_factory.mktemp("cache"), progress=False), spec


def test_round_trip_under_another_root(mtfl_table: tuple[FaceTable, TableSpec], tmp_path: Path) -> None:
    table, spec = mtfl_table
    size = pack_table(table, spec, tmp_path / "t.npz")
    assert size < table.crops.nbytes / 5
    out = unpack_table(tmp_path / "t.npz", "/elsewhere/data", tmp_path / "cache")
    assert out.name == f"table-{replace(spec, root='/elsewhere/data').key()}.npz" != f"table-{spec.key()}.npz"
    back = FaceTable.load(out)
    for name in ("identity", "attributes", "attr_mask", "pose", "source", "files"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    np.testing.assert_array_equal(back.landmarks, table.landmarks)
    assert back.identity_names == table.identity_names
    assert back.crops.shape == table.crops.shape and back.crops.dtype == np.uint8
    mse = np.mean((back.crops.astype(np.float64) - table.crops) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 33


def test_unpacked_table_is_the_one_training_looks_for(mtfl_table: tuple[FaceTable, TableSpec],
                                                      tmp_path: Path) -> None:
    table, spec = mtfl_table
    pack_table(table, spec, tmp_path / "t.npz")
    cfg = RunConfig()
    cfg.data = replace(cfg.data, root="/gpu/box", celeba=False, wild=False, limit=40)
    wanted = table_specs(cfg)
    assert wanted["val"] is None
    out = unpack_table(tmp_path / "t.npz", "/gpu/box", tmp_path / "cache")
    assert out.name == f"table-{wanted['train'].key()}.npz"


def test_bad_archive_and_quality_are_refused(mtfl_table: tuple[FaceTable, TableSpec], tmp_path: Path) -> None:
    table, spec = mtfl_table
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(FacemtlError, match="junk.npz"):
        unpack_table(tmp_path / "junk.npz", "/r", tmp_path / "cache")
    with pytest.raises(ValueError, match="quality"):
        pack_table(table, spec, tmp_path / "t.npz", quality=0)
    assert not (tmp_path / "t.npz").exists()
