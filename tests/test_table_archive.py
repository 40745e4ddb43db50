"""Table archives: a crop table packed here and unpacked under another data root is the table a run there
looks for, with exact labels and crops within WebP error."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facemtl.data.mixed import FaceTable, TableSpec, build_table
from facemtl.data.table_archive import pack_table, unpack_table
from facemtl.errors import FacemtlError, OutputExistsError
from facemtl.train.config import RunConfig
from facemtl.train.trainer import table_specs

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "deepid2.toml"


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
    np.testing.assert_array_equal(back.points, table.points)
    np.testing.assert_array_equal(back.age, table.age)
    assert back.identity_names == table.identity_names
    assert back.crops.shape == table.crops.shape and back.crops.dtype == np.uint8
    mse = np.mean((back.crops.astype(np.float64) - table.crops) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 33
    before = out.stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="exists"):
        unpack_table(tmp_path / "t.npz", "/elsewhere/data", tmp_path / "cache")
    assert out.stat().st_mtime_ns == before
    assert unpack_table(tmp_path / "t.npz", "/elsewhere/data", tmp_path / "cache", force=True) == out


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
    pack_table(table, spec, tmp_path / "good.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:5000])
    np.savez(tmp_path / "other.npz", crops=table.crops[:2])
    for name in ("junk.npz", "cut.npz", "other.npz"):
        with pytest.raises(FacemtlError, match=name):
            unpack_table(tmp_path / name, "/r", tmp_path / "cache")
    with pytest.raises(ValueError, match="quality"):
        pack_table(table, spec, tmp_path / "t.npz", quality=0)
    assert not (tmp_path / "t.npz").exists()


def test_training_runs_from_unpacked_tables_without_the_photos(data_dir: Path, tmp_path: Path) -> None:
    """Pack a tiny run's tables here, unpack them under an empty data root, and train there."""
    cfg = RunConfig()
    cfg.data = replace(cfg.data, root=str(data_dir), limit=60)
    for name, spec in table_specs(cfg).items():
        if spec is not None:
            pack_table(build_table(spec, tmp_path / "here", progress=False), spec, tmp_path / f"{name}.npz")
    empty = tmp_path / "no-photos"
    empty.mkdir()
    for name in ("train", "val"):
        unpack_table(tmp_path / f"{name}.npz", str(empty), tmp_path / "there")
    overrides = [
        "data.limit=60", f"data.root={empty}", f"data.cache_dir={tmp_path / 'there'}", f"out_dir={tmp_path / 'run'}",
        "train.epochs=1", "train.steps_per_epoch=2", "train.identities_per_batch=4", "train.images_per_identity=2",
        "train.others_per_batch=4", "train.num_workers=0", "train.threads=1", "train.grad_cosine_batches=0"]
    cmd = [sys.executable, "-m", "facemtl.cli", "train", "--config", str(CONFIG)]
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()
    assert not any(empty.iterdir())


def test_tables_command_carries_the_teacher_targets(data_dir: Path, tmp_path: Path) -> None:
    """`facemtl tables pack` here and `unpack` under another root: the teacher's targets arrive as the target
    file of the unpacked table, so a distillation run there finds them."""
    from facemtl.cli import main
    from facemtl.train.config import load_config
    from facemtl.train.teacher import compute_targets, load_targets, teacher_path
    from test_teacher import FakeTeacher

    sets = ["data.limit=40", "data.celeba=false", "data.wild=false", f"data.root={data_dir}",
            f"data.cache_dir={tmp_path / 'here'}"]
    cfg = load_config(CONFIG, {"data.limit": 40, "data.celeba": False, "data.wild": False, "data.root": str(data_dir),
                               "data.cache_dir": str(tmp_path / "here")})
    spec = table_specs(cfg)["train"]
    table = build_table(spec, tmp_path / "here", progress=False)
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    want, _ = compute_targets(table, teacher_path(spec, tmp_path / "here"), data_dir, teacher=FakeTeacher,
                              progress=False)
    args = ["tables", "pack", "--config", str(CONFIG), "--out", str(tmp_path / "pack")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert main(args) == 2                                                # refuses to replace without --force
    archive = next((tmp_path / "pack").glob("train-*.npz"))
    assert main(["tables", "unpack", str(archive), "--root", "/gpu/box", "--cache", str(tmp_path / "there")]) == 0
    moved = replace(spec, root="/gpu/box")
    unpacked = FaceTable.load(tmp_path / "there" / f"table-{moved.key()}.npz")
    got, done = load_targets(teacher_path(moved, tmp_path / "there"), unpacked)
    assert done.all() and np.array_equal(got, want)
