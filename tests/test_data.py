"""Dataset readers (real data and crafted files), the multi-task batch sampler, the flip and the mixed dataset."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.align import template
from facemtl.data.celeba import CELEBA_ATTRIBUTES, read_celeba
from facemtl.data.folders import read_person_folders
from facemtl.data.mixed import FaceTable, MultiTaskDataset, attribute_balance, collate
from facemtl.data.mtfl import read_mtfl
from facemtl.data.pairs import BatchPlan, MultiTaskBatchSampler
from facemtl.data.transforms import AugmentConfig, hflip
from facemtl.errors import ConfigError, DatasetError
from facemtl.train.losses import attribute_loss

# ---------------------------------------------------------------- real data (skips when absent)


@pytest.mark.data
def test_mtfl_real_splits(mtfl_dir: Path) -> None:
    train, test = read_mtfl(mtfl_dir, "training"), read_mtfl(mtfl_dir, "testing")
    assert (len(train), len(test)) == (10_000, 2_995)
    assert {f.path.relative_to(mtfl_dir).parts[0] for f in train} == {"lfw_5590", "net_7876"}
    assert {f.path.relative_to(mtfl_dir).parts[0] for f in test} == {"AFLW"}
    assert all(f.path.is_file() for f in train + test)
    for faces in (train, test):
        assert all(f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32 for f in faces)
        assert all(0 <= f.pose <= 4 and {f.male, f.smiling, f.eyeglasses} <= {0, 1} for f in faces)
    points = np.stack([f.landmarks for f in train])
    assert (points[:, 0, 0] < points[:, 1, 0]).all() and (points[:, 3, 0] < points[:, 4, 0]).all()
    # The testing list holds four upside-down AFLW faces (eyes below the mouth). Their first eye has the larger
    # x in the photo (it is the image-left eye of the upright face); every upright face keeps image-left first.
    points = np.stack([f.landmarks for f in test])
    upside_down = points[:, :2, 1].mean(axis=1) > points[:, 3:, 1].mean(axis=1)
    assert upside_down.sum() == 4
    assert (points[~upside_down, 0, 0] < points[~upside_down, 1, 0]).all()
    assert (points[~upside_down, 3, 0] < points[~upside_down, 4, 0]).all()


@pytest.mark.data
def test_celeba_real_splits(celeba_dir: Path) -> None:
    expected = {"train": (4560, 152), "val": (780, 26), "test": (660, 22)}
    identities = {}
    for split, (images, people) in expected.items():
        faces = read_celeba(celeba_dir, split)
        assert (len(faces), len({f.identity for f in faces})) == (images, people), split
        assert {f.split for f in faces} == {split}
        attrs = np.stack([f.attributes for f in faces])
        assert attrs.shape == (images, 40) and attrs.dtype == np.uint8 and set(np.unique(attrs)) == {0, 1}
        assert set(Counter(f.identity for f in faces).values()) == {30}
        identities[split] = {f.identity for f in faces}
    assert not (identities["train"] & identities["val"]) and not (identities["train"] & identities["test"])
    everything = read_celeba(celeba_dir)
    assert len(everything) == 6000 and all(f.path.is_file() for f in everything)


@pytest.mark.data
def test_celeba_wild_real_folders(celeba_wild_dir: Path) -> None:
    train = read_person_folders(celeba_wild_dir / "train")
    test = read_person_folders(celeba_wild_dir / "test")
    assert (len(train), len({p.person for p in train})) == (2561, 238)
    assert (len(test), len({p.person for p in test})) == (1162, 55)
    assert max(Counter(p.person for p in train).values()) <= 12
    assert not {p.person for p in train} & {p.person for p in test}
    assert all(p.path.parent.name == p.person for p in train + test)


# ---------------------------------------------------------------- crafted MTFL files

MTFL_LINES = [
    r"lfw_5590\Aaron_0001.jpg 107.25 147.75 126.25 106.25 140.75 108.75 113.25 143.75 158.75 162.75 1 2 2 3",
    r" net_7876\sub\b.jpg 10 30 20 12 28 11 11 20 31 30 2 1 1 1",
    r"  AFLW/0003-image.jpg 1.5 9.5 5 2 8 3 3.5 6 8 8.5 2 2 1 5",
]


def write_mtfl(root: Path, lines: list[str], split: str = "training", newline: str = "\r\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.txt").write_bytes(newline.join(lines).encode())
    return root


def test_mtfl_published_quirks_are_read(tmp_path: Path) -> None:
    root = write_mtfl(tmp_path / "MTFL", MTFL_LINES + ["", ""])  # CRLF, \ separators, leading spaces, blank end
    faces = read_mtfl(root)
    assert len(faces) == 3
    first, second, third = faces
    assert first.path == root / "lfw_5590" / "Aaron_0001.jpg"
    assert second.path == root / "net_7876" / "sub" / "b.jpg"
    assert third.path == root / "AFLW" / "0003-image.jpg"
    # x1..x5 then y1..y5 in the file -> (5,2) rows of (x, y), moved from MATLAB's 1-based pixels to 0-based
    np.testing.assert_array_equal(first.landmarks, [[106.25, 107.75], [146.75, 112.25], [125.25, 142.75],
                                                    [105.25, 157.75], [139.75, 161.75]])
    np.testing.assert_array_equal(third.landmarks[:, 0], [0.5, 8.5, 4, 1, 7])
    # gender 1 male / 2 female; smile, glasses 1 yes / 2 no; pose 1..5 -> 0..4
    assert (first.male, first.smiling, first.eyeglasses, first.pose) == (1, 0, 0, 2)
    assert (second.male, second.smiling, second.eyeglasses, second.pose) == (0, 1, 1, 0)
    assert (third.male, third.smiling, third.eyeglasses, third.pose) == (0, 0, 1, 4)


def test_mtfl_unix_newlines_give_the_same_faces(tmp_path: Path) -> None:
    crlf = read_mtfl(write_mtfl(tmp_path / "a", MTFL_LINES))
    lf = read_mtfl(write_mtfl(tmp_path / "b", MTFL_LINES, newline="\n"))
    assert [f.path.relative_to(tmp_path / "a") for f in crlf] == [f.path.relative_to(tmp_path / "b") for f in lf]
    assert all(np.array_equal(a.landmarks, b.landmarks) for a, b in zip(crlf, lf))


@pytest.mark.parametrize("bad_line,line_no,words", [
    (MTFL_LINES[1].rsplit(" ", 1)[0], 2, "expected 15 fields"),                  # 14 fields
    (MTFL_LINES[1] + " 7", 2, "expected 15 fields"),                            # 16 fields
    (MTFL_LINES[1].replace(" 2 1 1 1", " 3 1 1 1"), 2, "out of range"),         # gender 3
    (MTFL_LINES[1].replace(" 2 1 1 1", " 2 3 1 1"), 2, "out of range"),         # smile 3
    (MTFL_LINES[1].replace(" 2 1 1 1", " 2 1 1 6"), 2, "out of range"),         # pose 6
    (MTFL_LINES[1].replace(" 2 1 1 1", " 2 1 1 0"), 2, "out of range"),         # pose 0
    (MTFL_LINES[1].replace(" 10 30", " ten 30"), 2, "ten"),                     # not a number
    (MTFL_LINES[1].replace(" 2 1 1 1", " 2 1.5 1 1"), 2, "1.5"),                # label not an integer
])
def test_mtfl_malformed_line_names_its_number(tmp_path: Path, bad_line: str, line_no: int, words: str) -> None:
    root = write_mtfl(tmp_path / "MTFL", [MTFL_LINES[0], bad_line, MTFL_LINES[2]])
    with pytest.raises(DatasetError, match=f"training.txt:{line_no}:") as caught:
        read_mtfl(root)
    assert words in str(caught.value)


def test_mtfl_missing_or_empty_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_mtfl(tmp_path, "testing")
    with pytest.raises(DatasetError, match="no faces"):
        read_mtfl(write_mtfl(tmp_path / "e", ["", "  ", ""]))


# ---------------------------------------------------------------- crafted CelebA lists


def write_celeba(root: Path, header: list[str] | None = None, rows: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = ["000001.jpg", "000002.jpg", "000003.jpg"]
    (root / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 7\n000003.jpg 9\n")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 1\n")
    header = list(CELEBA_ATTRIBUTES) if header is None else header
    if rows is None:
        rows = [f"{name}  " + " ".join("1" if (k + i) % 3 == 0 else "-1" for k in range(40))
                for i, name in enumerate(names)]
    (root / "list_attr_celeba.txt").write_text("3\n" + " ".join(header) + "\n" + "\n".join(rows) + "\n")
    return root


def test_celeba_crafted_lists(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba")
    faces = read_celeba(root)
    assert [(f.path.name, f.identity, f.split) for f in faces] == [
        ("000001.jpg", 7, "train"), ("000002.jpg", 7, "test"), ("000003.jpg", 9, "val")]
    assert faces[0].path == root / "img_align_celeba" / "000001.jpg"
    np.testing.assert_array_equal(faces[1].attributes[:6], [0, 0, 1, 0, 0, 1])  # (k + 1) % 3 == 0 -> 1
    assert faces[1].attributes.dtype == np.uint8 and faces[1].attributes.sum() == 13
    assert [f.path.name for f in read_celeba(root, "val")] == ["000003.jpg"]


@pytest.mark.parametrize("header", [
    list(CELEBA_ATTRIBUTES[:-1]),                                 # 39 names
    list(CELEBA_ATTRIBUTES[1:]) + [CELEBA_ATTRIBUTES[0]],         # wrong order
    [n.lower() for n in CELEBA_ATTRIBUTES],                       # wrong spelling
    ["000001.jpg"] + ["-1"] * 40,                                 # the count line's neighbour is a data row
], ids=["39-names", "order", "case", "data-row"])
def test_celeba_wrong_attribute_header(tmp_path: Path, header: list[str]) -> None:
    root = write_celeba(tmp_path / "celeba", header=header)
    with pytest.raises(DatasetError, match="40 attribute names"):
        read_celeba(root)


def test_celeba_malformed_rows(tmp_path: Path) -> None:
    short = write_celeba(tmp_path / "a", rows=["000001.jpg " + " ".join(["1"] * 39)])
    with pytest.raises(DatasetError, match="list_attr_celeba.txt:3: expected 41 fields, got 40"):
        read_celeba(short)
    stranger = write_celeba(tmp_path / "b", rows=["999999.jpg " + " ".join(["1"] * 40)])
    with pytest.raises(DatasetError, match="999999.jpg: missing"):
        read_celeba(stranger)
    with pytest.raises(DatasetError, match="unknown CelebA split"):
        read_celeba(short, "training")
    with pytest.raises(DatasetError, match="not found"):
        read_celeba(tmp_path / "nowhere")


def test_person_folders_crafted(tmp_path: Path) -> None:
    for person, files in {"bob": ["2.jpg", "1.PNG", ".hidden.jpg", "notes.txt"], "amy": ["a.jpeg"],
                          ".git": ["x.jpg"], "cid": []}.items():
        (tmp_path / person).mkdir()
        for name in files:
            (tmp_path / person / name).write_bytes(b"x")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    photos = read_person_folders(tmp_path)
    assert [(p.person, p.path.name) for p in photos] == [("amy", "a.jpeg"), ("bob", "1.PNG"), ("bob", "2.jpg")]
    assert [p.person for p in read_person_folders(tmp_path, min_photos=2)] == ["bob", "bob"]
    with pytest.raises(DatasetError):
        read_person_folders(tmp_path, min_photos=3)
    with pytest.raises(DatasetError):
        read_person_folders(tmp_path / "loose.jpg")


# ---------------------------------------------------------------- the batch sampler

COUNTS = [8, 8, 5, 4, 4, 3, 9, 6, 4, 12]  # images per identity; identity 5 has fewer than K
N_OTHERS = 25
PLAN = BatchPlan(identities_per_batch=3, images_per_identity=4, others_per_batch=5, views=2)


@pytest.fixture(scope="module")
def identity() -> np.ndarray:
    labels = np.concatenate([np.full(c, i) for i, c in enumerate(COUNTS)] + [np.full(N_OTHERS, -1)])
    return np.random.default_rng(11).permutation(labels)


def check_batch(batch: np.ndarray, identity: np.ndarray, plan: BatchPlan = PLAN) -> None:
    p, k, m, v = plan.identities_per_batch, plan.images_per_identity, plan.others_per_batch, plan.views
    assert batch.dtype == np.int64 and len(batch) == plan.batch_size == p * k + m * v
    ids, extra = batch[:p * k], batch[p * k:]
    chunks = identity[ids].reshape(p, k)
    assert (chunks >= 0).all()
    assert (chunks == chunks[:, :1]).all()                     # each chunk of K is one identity
    counts = Counter(identity[ids].tolist())                   # so every identity present has >= K images:
    assert all(c % k == 0 for c in counts.values())            # same-identity pairs in every batch
    # (an identity with many images may give two chunks to one batch, as pairs.py documents)
    assert (identity[extra] == -1).all()
    views = extra.reshape(m, v)
    assert (views == views[:, :1]).all()                       # each other sample repeated `views` times
    assert len(set(views[:, 0])) == m


def test_sampler_batch_composition(identity: np.ndarray) -> None:
    sampler = MultiTaskBatchSampler(identity, PLAN, seed=4)
    chunks = sum(max(1, c // 4) for c in COUNTS)              # 15 chunks of 4 -> 5 batches of 3 identities
    assert len(sampler) == chunks // 3 == 5
    batches = sampler.epoch_batches(0)
    assert len(batches) == 5
    for batch in batches:
        check_batch(batch, identity)
    # identities with >= K images use each image at most once per epoch; the small one is drawn with repeats
    used = np.concatenate([b[:12] for b in batches])
    big = used[identity[used] != 5]
    assert len(big) == len(set(big.tolist()))
    small = used[identity[used] == 5]
    assert len(small) == 4 and set(small.tolist()) <= set(np.flatnonzero(identity == 5).tolist())
    # the others form a stream: one epoch of 5 batches x 5 draws = 25 = every other sample exactly once
    others = np.concatenate([b[12::2] for b in batches])
    assert sorted(others.tolist()) == np.flatnonzero(identity == -1).tolist()


def test_sampler_is_deterministic_per_seed_and_epoch(identity: np.ndarray) -> None:
    a, b = MultiTaskBatchSampler(identity, PLAN, seed=4), MultiTaskBatchSampler(identity, PLAN, seed=4)
    for epoch in (0, 3):
        assert all(np.array_equal(x, y) for x, y in zip(a.epoch_batches(epoch), b.epoch_batches(epoch)))
    flat = {e: np.concatenate(a.epoch_batches(e)) for e in (0, 1, 2)}
    assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[1], flat[2])
    other_seed = np.concatenate(MultiTaskBatchSampler(identity, PLAN, seed=5).epoch_batches(0))
    assert not np.array_equal(flat[0], other_seed)


def test_sampler_shards_interleave_into_the_single_process_list(identity: np.ndarray) -> None:
    full = MultiTaskBatchSampler(identity, PLAN, seed=2).epoch_batches(1)
    ranks = [MultiTaskBatchSampler(identity, PLAN, seed=2, rank=r, world=2).epoch_batches(1) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(full) // 2 == 2
    for r in (0, 1):
        for j, batch in enumerate(ranks[r]):
            assert np.array_equal(batch, full[2 * j + r])
            check_batch(batch, identity)
    assert not any(np.array_equal(x, y) for x in ranks[0] for y in ranks[1])
    zero, one = np.concatenate(ranks[0]), np.concatenate(ranks[1])
    assert not set(zero[identity[zero] != 5].tolist()) & set(one[identity[one] != 5].tolist())


def test_sampler_draws_only_the_given_indices(identity: np.ndarray) -> None:
    held_out = np.flatnonzero(np.isin(identity, [0, 9]))
    held_out = np.concatenate([held_out, np.flatnonzero(identity == -1)[:10]])
    keep = np.setdiff1d(np.arange(len(identity)), held_out)
    sampler = MultiTaskBatchSampler(identity, PLAN, seed=0, indices=keep[::-1])  # order of indices irrelevant
    drawn = set()
    for epoch in range(4):
        for batch in sampler.epoch_batches(epoch):
            check_batch(batch, identity)
            drawn |= set(batch.tolist())
    assert drawn <= set(keep.tolist()) and not drawn & set(held_out.tolist())
    assert set(np.flatnonzero(identity == -1).tolist()) - set(held_out.tolist()) <= drawn


def test_sampler_refuses_impossible_plans(identity: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        MultiTaskBatchSampler(identity, BatchPlan(3, 1, 5, 2))
    with pytest.raises(ConfigError):
        MultiTaskBatchSampler(identity, PLAN, rank=2, world=2)
    with pytest.raises(ConfigError):
        MultiTaskBatchSampler(identity, BatchPlan(11, 4, 5, 2))                   # only 10 identities
    with pytest.raises(ConfigError):
        MultiTaskBatchSampler(identity, PLAN, indices=np.flatnonzero(identity >= 0))   # no others left
    with pytest.raises(ConfigError):
        MultiTaskBatchSampler(identity, PLAN, world=6)                           # 5 batches for 6 ranks


# ---------------------------------------------------------------- horizontal flip


def test_hflip_mirrors_swaps_pairs_and_pose() -> None:
    image = np.zeros((6, 10, 3), np.uint8)
    image[1, 2] = (255, 0, 0)       # a red pixel on landmark 0 (x=2, y=1)
    image[5, 3] = (0, 0, 255)       # a blue pixel on landmark 3 (x=3, y=5)
    points = np.array([[2, 1], [7, 1.5], [4.5, 3], [3, 5], [6, 4.5]], np.float32)
    flipped, pts, pose = hflip(image, points, 1)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    assert flipped.flags.c_contiguous
    # x -> 9 - x, then the pairs swap so the image-left point stays first
    np.testing.assert_array_equal(pts, [[2, 1.5], [7, 1], [4.5, 3], [3, 4.5], [6, 5]])
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]
    assert tuple(flipped[1, 7]) == (255, 0, 0) and tuple(pts[1]) == (7, 1)   # the marked pixels moved with
    assert tuple(flipped[5, 6]) == (0, 0, 255) and tuple(pts[4]) == (6, 5)   # their landmarks
    assert pose == 3
    np.testing.assert_array_equal(points[0], [2, 1])  # input untouched


@pytest.mark.parametrize("pose,expected", [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0), (-1, -1)])
def test_hflip_pose(pose: int, expected: int) -> None:
    assert hflip(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 2), np.float32), pose)[2] == expected


def test_hflip_twice_is_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    points = rng.uniform(0, 14, (5, 2)).astype(np.float32)
    for pose in range(5):
        back = hflip(*hflip(image, points, pose))
        np.testing.assert_array_equal(back[0], image)
        np.testing.assert_allclose(back[1], points, atol=1e-5)
        assert back[2] == pose


# ---------------------------------------------------------------- the mixed dataset on a hand-made table

SIZE, PAD = 64, 16
CONTEXT = SIZE + 2 * PAD


def blob(center: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:CONTEXT, 0:CONTEXT]
    return 255 * np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma ** 2))


@pytest.fixture(scope="module")
def table() -> FaceTable:
    """Five 96x96 context crops: random texture, landmarks near the template; the last has no landmarks."""
    rng = np.random.default_rng(21)
    n = 5
    crops = rng.integers(0, 256, (n, CONTEXT, CONTEXT, 3), dtype=np.uint8)
    landmarks = (template(SIZE) + PAD + rng.normal(0, 1.5, (n, 5, 2))).astype(np.float32)
    landmarks[4] = np.nan
    # crop 3 is black but for a bright blob on its first eye, to follow the image through augmentation
    crops[3] = np.rint(blob(landmarks[3, 0])).astype(np.uint8)[:, :, None]
    attributes = rng.integers(0, 2, (n, 40)).astype(np.uint8)
    return FaceTable(crops, landmarks, np.array([0, 1, -1, -1, 2]), attributes, np.ones((n, 40), bool),
                     np.array([-1, -1, 0, 1, -1]), np.array([0, 1, 2, 2, 0], np.int8),
                     np.array([f"f{i}.jpg" for i in range(n)]), ["a", "b", "c"])


def test_dataset_without_augmentation_is_the_centre_crop(table: FaceTable) -> None:
    dataset = MultiTaskDataset(table, SIZE)
    assert len(dataset) == 5
    image, targets = dataset[1]
    np.testing.assert_array_equal(image, table.crops[1, PAD:PAD + SIZE, PAD:PAD + SIZE].transpose(2, 0, 1))
    np.testing.assert_allclose(targets["landmarks"], table.landmarks[1] - PAD)
    assert targets["landmarks_mask"] and targets["identity"] == 1 and targets["pose"] == -1
    assert targets["index"] == 1
    np.testing.assert_array_equal(targets["attributes"], table.attributes[1])


def test_balanced_attribute_weighs_each_label_alike_within_each_set() -> None:
    male = CELEBA_ATTRIBUTES.index("Male")
    source = np.array([2] * 8 + [0] * 4, np.int8)                     # MTFL: 6 of 8 men; CelebA: 1 of 4
    attributes = np.zeros((12, 40), np.uint8)
    attributes[[0, 1, 2, 3, 4, 5, 8], male] = 1
    mask = np.zeros((12, 40), bool)
    mask[:, male] = True
    table = FaceTable(np.zeros((12, CONTEXT, CONTEXT, 3), np.uint8), np.full((12, 5, 2), np.nan, np.float32),
                      np.full(12, -1), attributes, mask, np.full(12, -1), source,
                      np.array([f"f{i}.jpg" for i in range(12)]))
    weights = attribute_balance(table, np.arange(12), CELEBA_ATTRIBUTES, ["Male"])
    np.testing.assert_allclose(weights[2, male], [0.5 / 0.25, 0.5 / 0.75])   # (women, men) in MTFL
    np.testing.assert_allclose(weights[0, male], [0.5 / 0.75, 0.5 / 0.25])
    assert (np.delete(weights, male, axis=1) == 1).all()
    _, tg = collate([MultiTaskDataset(table, SIZE, attr_weights=weights)[i] for i in range(12)])
    assert tg["attr_weight"].shape == (12, 40)
    # one logit for every face: balanced, the set's gradient vanishes at 0 (its share of men does not move it);
    # plain, its six men of eight pull it towards "man" (mean-loss gradient x 8: 8 x 0.5 - 6)
    logits = torch.zeros(12, 40, requires_grad=True)
    for weight, mtfl_pull in ((tg["attr_weight"], 0.0), (None, -2.0)):
        logits.grad = None
        attribute_loss(logits[:8], tg["attributes"][:8], tg["attr_mask"][:8],
                       weight=None if weight is None else weight[:8]).backward()
        assert float(logits.grad[:8, male].sum()) * 8 == pytest.approx(mtfl_pull, abs=1e-6)


def test_dataset_get_is_deterministic_and_uint8(table: FaceTable) -> None:
    dataset = MultiTaskDataset(table, SIZE, AugmentConfig())
    for index in range(len(table)):
        image, targets = dataset.get(index, seed=123)
        again, targets_again = dataset.get(index, seed=123)
        assert image.dtype == np.uint8 and image.shape == (3, SIZE, SIZE) and image.flags.c_contiguous
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(targets["landmarks"], targets_again["landmarks"])
        assert targets["pose"] == targets_again["pose"]
    outputs = {dataset.get(0, seed=s)[0].tobytes() for s in range(6)}
    assert len(outputs) == 6  # different seeds, different augmentations


def test_augmentation_keeps_image_left_points_first(table: FaceTable) -> None:
    dataset = MultiTaskDataset(table, SIZE, AugmentConfig())
    flips = 0
    for seed in range(50):
        for index in (0, 1, 2):
            _, targets = dataset.get(index, seed)
            pts = targets["landmarks"]
            assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0], (index, seed, pts)
            assert targets["landmarks_mask"]
        _, targets = dataset.get(2, seed)
        flips += targets["pose"] == 4  # pose 0 (left profile) becomes 4 when flipped
    assert 10 < flips < 40  # flip probability 0.5


def test_augmented_landmarks_follow_the_image(table: FaceTable) -> None:
    """The blob painted on crop 3's first eye stays under that eye's point (index 1 once flipped)."""
    dataset = MultiTaskDataset(table, SIZE, AugmentConfig(color=0, gray=0, degrade=0))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    swapped = 0
    for seed in range(30):
        image, targets = dataset.get(3, seed)
        weight = image[0].astype(np.float64)
        centroid = np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()
        distance = np.linalg.norm(targets["landmarks"][:2] - centroid, axis=1)
        eye = int(np.argmin(distance))
        assert distance[eye] < 0.3, (seed, distance)
        assert targets["pose"] == (3 if eye == 1 else 1)  # flipped exactly when the eyes swapped
        swapped += eye
    assert 0 < swapped < 30


def test_dataset_sample_without_landmarks(table: FaceTable) -> None:
    dataset = MultiTaskDataset(table, SIZE, AugmentConfig())
    samples = [dataset.get(4, seed) for seed in range(4)]
    assert all(not t["landmarks_mask"] and t["pose"] == -1 for _, t in samples)
    images, targets = collate(samples + [dataset.get(0, 0)])
    assert images.shape == (5, 3, SIZE, SIZE) and str(images.dtype) == "torch.uint8"
    assert targets["landmarks_mask"].tolist() == [False] * 4 + [True]
    assert targets["identity_mask"].tolist() == [True] * 5
    assert targets["pose_mask"].tolist() == [False] * 5
    assert targets["landmarks"].shape == (5, 5, 2) and targets["attr_mask"].shape == (5, 40)


def test_table_subset_and_save_load(table: FaceTable, tmp_path: Path) -> None:
    part = table.subset(np.array([3, 0]))
    assert len(part) == 2 and part.identity.tolist() == [-1, 0] and part.identity_names == ["a", "b", "c"]
    path = tmp_path / "table.npz"
    table.save(path)
    back = FaceTable.load(path)
    for name in ("crops", "identity", "attributes", "attr_mask", "pose", "source", "files"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    np.testing.assert_array_equal(back.landmarks, table.landmarks)  # NaN rows compare equal here
    assert back.identity_names == table.identity_names


def test_data_root_falls_back_to_shared_data_beside_the_working_directory(tmp_path, monkeypatch) -> None:
    """An installed package has no checkout beside it: ../shared/data is then looked up from the working dir."""
    import facemtl.data as data
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.delenv("FACEMTL_DATA", raising=False)
    monkeypatch.setattr(data, "_CHECKOUT_ROOT", tmp_path / "site" / "packages")
    monkeypatch.chdir(tmp_path / "project")
    assert data.data_root() == (tmp_path / "project").parent / "shared" / "data"
    monkeypatch.chdir(tmp_path)
    assert data.data_root() == tmp_path / "site" / "shared" / "data"     # none exists: the checkout's, named in errors
    monkeypatch.setenv("FACEMTL_DATA", str(tmp_path / "elsewhere"))
    assert data.data_root() == tmp_path / "elsewhere"
