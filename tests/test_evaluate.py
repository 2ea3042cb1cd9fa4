"""trainer/evaluate.py against known answers: retrieval, zero-shot and the linear probe scored on features chosen
by the test.

The scoring code is reached through its real path (labelled folders and WebDataset shards read from disk, images
decoded, centre-cropped and normalised, texts tokenised in batches); only the encoders are replaced, by a stand-in
that reads which picture it was given from the picture's colour and which text from its words, and returns the
feature vector the test assigned to it.
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import MEAN, STD
from trainer.evaluate import PROBE_C, evaluate, head_tail, linear_probe, read_class_counts, retrieval, zero_shot

SIZE = 8  # the stand-in model's image size: every picture here is one flat colour
DIM = 32


def colour(code: int) -> tuple[int, int, int]:
    """A flat colour naming ``code`` (< 4096), 16 levels apart per channel so that decoding is exact."""
    return (code % 16 * 16 + 8, code // 16 % 16 * 16 + 8, code // 256 % 16 * 16 + 8)


def png(code: int, size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour(code)).save(buf, "PNG")
    return buf.getvalue()


class StandInModel(torch.nn.Module):
    """Maps the picture of colour ``code`` to ``image_features[code]`` and a text to ``text_features[word]`` for its
    first known word (``vocab``); L2-normalised, as CLIP's encoders return them."""

    def __init__(self, image_features: dict[int, torch.Tensor], text_features: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = SimpleNamespace(embed_dim=DIM, vision_cfg=SimpleNamespace(image_size=SIZE))
        self.image_features, self.vocab = image_features, list(text_features)
        self.text_table = torch.stack([text_features[w] for w in self.vocab]) if text_features else None
        self.images_seen = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
        rgb = (x * torch.as_tensor(STD).view(3, 1, 1) + torch.as_tensor(MEAN).view(3, 1, 1)) * 255
        levels = ((rgb.mean(dim=(2, 3)) - 8) / 16).round().long()
        codes = levels[:, 0] + 16 * levels[:, 1] + 256 * levels[:, 2]
        self.images_seen += len(codes)
        return torch.nn.functional.normalize(torch.stack([self.image_features[int(c)] for c in codes]), dim=1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.text_table[tokens], dim=1)


class WordTokenizer:
    """Each text → the index of its first word found in ``vocab``."""

    def __init__(self, vocab: list[str]):
        self.ids = {w: i for i, w in enumerate(vocab)}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([next(self.ids[w] for w in re.findall(r"[\w-]+", t) if w in self.ids) for t in texts])


def random_vectors(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


# ------------------------------------------------------------------------------------------------------ retrieval

N_PAIRS = 400


def write_pairs(folder: Path, n: int, per_shard: int = 150, first_code: int = 0) -> list[Path]:
    """Shards of pairs ``key.png`` (colour code first_code + i) + ``key.txt`` ("item-i ..."), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(math.ceil(n / per_shard)):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                caption = f"a picture of item-{i}, nothing else".encode()
                for ext, data in (("png", png(first_code + i)), ("txt", caption)):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_pairs(tmp_path_factory.mktemp("pairs"), N_PAIRS)


def retrieval_model(text_of: list[int], seed: int = 0) -> tuple[StandInModel, WordTokenizer]:
    """Image i gets vector v_i; the text of pair i gets v_{text_of[i]}."""
    v = random_vectors(N_PAIRS, seed)
    texts = {f"item-{i}": v[text_of[i]] for i in range(N_PAIRS)}
    model = StandInModel({i: v[i] for i in range(N_PAIRS)}, texts)
    return model, WordTokenizer(model.vocab)


def test_identical_features_retrieve_every_pair_first(shards):
    model, tok = retrieval_model(list(range(N_PAIRS)))
    r = retrieval(model, tok, shards)
    assert r == {"pairs": N_PAIRS, **{f"{d}_R@{k}": 1.0 for d in ("image_to_text", "text_to_image")
                                      for k in (1, 5, 10)}}
    assert model.images_seen == N_PAIRS
    assert retrieval(model, tok, shards, max_pairs=50)["pairs"] == 50


def test_permuted_features_retrieve_at_chance(shards):
    perm = np.random.default_rng(11).permutation(N_PAIRS)
    fixed = int((perm == np.arange(N_PAIRS)).sum())
    assert fixed >= 1  # this permutation leaves a few pairs in place: R@1 must find exactly those
    model, tok = retrieval_model(perm.tolist())
    r = retrieval(model, tok, shards)
    assert r["pairs"] == N_PAIRS
    for d in ("image_to_text", "text_to_image"):
        # the candidate carrying the query's own vector (similarity 1) beats every moved pair's true partner, so
        # R@1 is the share of pairs the permutation left in place
        assert r[f"{d}_R@1"] == pytest.approx(fixed / N_PAIRS)
        # the rank of a moved pair's partner among 400 random vectors is about uniform: the number of pairs found
        # within the top k is about Binomial(400, k/400), mean k, sd < sqrt(k); bounded at mean + 5 sd (this
        # permutation: 4 and 5 pairs within the top 5, 12 and 14 within the top 10)
        for k in (5, 10):
            assert r[f"{d}_R@{k}"] * N_PAIRS <= k + 5 * math.sqrt(k), (d, k, r)


def test_collapsed_model_does_not_retrieve_perfectly(shards):
    same = random_vectors(1, 5)[0]
    model = StandInModel({i: same for i in range(N_PAIRS)}, {f"item-{i}": same for i in range(N_PAIRS)})
    r = retrieval(model, WordTokenizer(model.vocab), shards)
    # every candidate ties with the true one: its rank is uniform, so R@k is exactly k / pairs (chance)
    for k in (1, 5, 10):
        assert r[f"image_to_text_R@{k}"] == pytest.approx(k / N_PAIRS)
        assert r[f"text_to_image_R@{k}"] == pytest.approx(k / N_PAIRS)


def test_fewer_than_two_pairs_are_not_scored(tmp_path):
    model, tok = retrieval_model(list(range(N_PAIRS)))
    assert retrieval(model, tok, write_pairs(tmp_path, 1)) == {"pairs": 1}


# ---------------------------------------------------------------------------------- zero-shot and linear probe

CLASSES = [f"c{i}" for i in range(12)]  # sorted as text: c0, c1, c10, c11, c2, ...
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
PER_CLASS = 4
TEMPLATES = ["a photo of a {}.", "a drawing of the {}"]


def code(c: int, k: int) -> int:
    """Colour code of picture k of class c."""
    return c * PER_CLASS + k


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """``root/c<i>/<k>.png`` and a zeroshot.json naming class c<i> by the word NAMES[i]."""
    root = tmp_path_factory.mktemp("labelled")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for k in range(PER_CLASS):
            (root / name / f"{k}.png").write_bytes(png(code(c, k), (10 + k, 9)))
    (root / "zeroshot.json").write_text(json.dumps({"classnames": dict(zip(CLASSES, NAMES, strict=True)),
                                                    "templates": TEMPLATES}))
    return root


def class_model(shown_as, spread: float = 0.25) -> tuple[StandInModel, WordTokenizer]:
    """Class c's prompts get a vector u_c; picture k of class c gets u_{shown_as(c, k)} plus noise of norm ~spread
    (the classes' vectors are ~1.4 apart, so the nearest class vector is always u_{shown_as(c, k)})."""
    u = random_vectors(len(CLASSES), 1) * 4
    noise = random_vectors(len(CLASSES) * PER_CLASS, 2) * spread * 4
    images = {code(c, k): u[shown_as(c, k)] + noise[code(c, k)] for c in range(len(CLASSES)) for k in range(PER_CLASS)}
    model = StandInModel(images, {NAMES[c]: u[c] for c in range(len(CLASSES))})
    return model, WordTokenizer(model.vocab)


def test_zero_shot_on_separable_features_is_perfect(labelled):
    model, tok = class_model(lambda c, k: c)
    z = zero_shot(model, tok, labelled)
    per_class = z.pop("per_class")
    assert z == {"top1": 1.0, "top5": 1.0, "images": len(CLASSES) * PER_CLASS, "classes": len(CLASSES),
                 "chance": 1 / len(CLASSES), "templates": len(TEMPLATES), "mean_per_class": 1.0}
    assert per_class == {c: {"images": PER_CLASS, "correct": PER_CLASS, "accuracy": 1.0} for c in CLASSES}


def test_zero_shot_counts_exactly_the_misread_class(labelled):
    # every picture of c7 looks like c2: 4 of 48 wrong
    model, tok = class_model(lambda c, k: 2 if c == 7 else c)
    z = zero_shot(model, tok, labelled)
    assert z["top1"] == pytest.approx(44 / 48)
    assert {c: v["accuracy"] for c, v in z["per_class"].items()} == {c: 0.0 if c == "c7" else 1.0 for c in CLASSES}


def test_a_collapsed_model_is_at_chance_in_every_class(labelled):
    """Every picture and every class prompt on one vector: all classes tie. Taking the first of them would give
    the first class every picture (100% for it, 0% for the rest, and a head or tail third to match)."""
    same = random_vectors(1, 5)[0]
    model = StandInModel({code(c, k): same for c in range(len(CLASSES)) for k in range(PER_CLASS)},
                         {name: same for name in NAMES})
    z = zero_shot(model, WordTokenizer(model.vocab), labelled)
    assert z["top1"] == pytest.approx(1 / len(CLASSES)) and z["top5"] == pytest.approx(5 / len(CLASSES))
    assert {c: v["accuracy"] for c, v in z["per_class"].items()} == pytest.approx(
        {c: 1 / len(CLASSES) for c in CLASSES})


def test_head_and_tail_thirds_by_pool_frequency(labelled, tmp_path):
    # c7 (misread) is the rarest class; c0..c3 the most frequent: the tail third holds c7, the head third does not
    model, tok = class_model(lambda c, k: 2 if c == 7 else c)
    counts = {c: 100 - 5 * i for i, c in enumerate(f"c{j}" for j in range(12))}
    counts["c7"] = 1
    (tmp_path / "counts.json").write_text(json.dumps(counts))
    z = evaluate(model, tok, zeroshot_dir=str(labelled), do_probe=False,
                 class_counts=read_class_counts(tmp_path / "counts.json"))["zeroshot"]
    assert z["head"]["classes"] == ["c0", "c1", "c2", "c3"] and z["head"]["top1"] == 1.0
    assert z["tail"]["classes"] == ["c9", "c10", "c11", "c7"] and z["tail"]["top1"] == pytest.approx(3 / 4)
    assert z["tail"]["pairs"] == [55, 50, 45, 1]
    with pytest.raises(ValueError, match="lack 1 evaluated classes: c5"):
        head_tail(z["per_class"], {c: n for c, n in counts.items() if c != "c5"})
    (tmp_path / "bad.json").write_text(json.dumps({"c0": -1}))
    with pytest.raises(ValueError, match="non-negative integers"):
        read_class_counts(tmp_path / "bad.json")


def test_zero_shot_at_chance_when_pictures_carry_no_class(labelled):
    # each picture shows a class drawn at random: top-1 is right about 1 time in 12, as rng's draw fixes
    rng = np.random.default_rng(3)
    shown = {(c, k): int(rng.integers(len(CLASSES))) for c in range(len(CLASSES)) for k in range(PER_CLASS)}
    model, tok = class_model(lambda c, k: shown[c, k])
    z = zero_shot(model, tok, labelled)
    assert z["top1"] == pytest.approx(sum(shown[c, k] == c for c, k in shown) / 48)


def test_linear_probe_on_separable_features_is_perfect(labelled):
    model, _ = class_model(lambda c, k: c)
    p = linear_probe(model, labelled)
    assert p == {"top1": 1.0, "fit": len(CLASSES) * PER_CLASS // 2, "test": len(CLASSES) * PER_CLASS // 2,
                 "chance": 1 / len(CLASSES), "C": PROBE_C[0]}  # separable at every C: the smallest is chosen


def test_linear_probe_fits_even_pictures_and_tests_odd_ones(labelled):
    # the odd-numbered (test) pictures of each class look like the next class: a probe fit on the even ones only
    # gets every test picture wrong
    model, _ = class_model(lambda c, k: (c + 1) % len(CLASSES) if k % 2 else c)
    assert linear_probe(model, labelled)["top1"] == 0.0


def test_linear_probe_chooses_its_regularisation_on_the_fit_half(tmp_path):
    """Features that share one large direction and vary most along another that says nothing of the class (as a
    CLIP tower's often do): a strong penalty leaves the probe near the class means, which that spread hides; the
    probe's C, chosen by cross-validation on the fit half alone, weighs the small directions that separate."""
    from sklearn.linear_model import LogisticRegression

    n_classes, per_class = 4, 12
    rng = np.random.default_rng(0)
    shared, spread = rng.normal(size=DIM) * 10, rng.normal(size=DIM)
    offsets = rng.normal(size=(n_classes, DIM)) * 0.3
    vectors = np.array([shared + offsets[c] + spread / np.linalg.norm(spread) * rng.normal() * 3
                        + rng.normal(size=DIM) * 0.02 for c in range(n_classes) for _ in range(per_class)])
    images = {i: torch.as_tensor(v).float() for i, v in enumerate(vectors)}
    for c in range(n_classes):
        (tmp_path / f"k{c}").mkdir()
        for k in range(per_class):
            (tmp_path / f"k{c}" / f"{k:02d}.png").write_bytes(png(c * per_class + k))
    p = linear_probe(StandInModel(images, {}), tmp_path)
    assert p["top1"] == 1.0 and p["C"] >= 100 and p["C"] in PROBE_C
    feats = torch.nn.functional.normalize(torch.stack(list(images.values())), dim=1).numpy()
    y = np.repeat(np.arange(n_classes), per_class)
    fit = np.tile(np.arange(per_class) % 2 == 0, n_classes)
    fixed = LogisticRegression(max_iter=5000, C=1.0).fit(feats[fit], y[fit])
    assert (fixed.predict(feats[~fit]) == y[~fit]).mean() <= 0.9  # what one fixed C measured: 0.875


def test_evaluate_runs_all_three_on_one_model(labelled, tmp_path):
    u = random_vectors(len(CLASSES), 1) * 4
    v = random_vectors(N_PAIRS, 0)
    images = {code(c, k): u[c] for c in range(len(CLASSES)) for k in range(PER_CLASS)}
    images.update({i + 1000: v[i] for i in range(N_PAIRS)})  # retrieval pictures are codes 1000…1399 here
    texts = {**{NAMES[c]: u[c] for c in range(len(CLASSES))}, **{f"item-{i}": v[i] for i in range(N_PAIRS)}}
    model = StandInModel(images, texts)
    pair_shards = write_pairs(tmp_path, N_PAIRS, first_code=1000)
    results = evaluate(model, WordTokenizer(model.vocab), zeroshot_dir=str(labelled), heldout=pair_shards)
    assert results["zeroshot"]["top1"] == 1.0 and results["linear_probe"]["top1"] == 1.0
    assert results["retrieval"]["pairs"] == N_PAIRS and results["retrieval"]["image_to_text_R@1"] == 1.0
    assert set(evaluate(model, WordTokenizer(model.vocab), zeroshot_dir=str(labelled), heldout=pair_shards,
                        do_retrieval=False, do_probe=False)) == {"zeroshot"}


# ------------------------------------------------------------------------------------------------------ batching


class CountingModel(StandInModel):
    """The stand-in that also records how many images and texts each forward pass was given."""

    def __init__(self, *args):
        super().__init__(*args)
        self.image_batches: list[int] = []
        self.text_batches: list[int] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_batches.append(len(x))
        return super().encode_image(x)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.text_batches.append(len(tokens))
        return super().encode_text(tokens)


def test_evaluation_encodes_in_batches_of_eval_batch_size(labelled, tmp_path):
    """eval.batch_size is how many images or texts go through the model at once, in every part of evaluation."""
    u = random_vectors(len(CLASSES), 1) * 4
    v = random_vectors(N_PAIRS, 0)
    images = {code(c, k): u[c] for c in range(len(CLASSES)) for k in range(PER_CLASS)}
    images.update({i + 1000: v[i] for i in range(N_PAIRS)})
    texts = {**{NAMES[c]: u[c] for c in range(len(CLASSES))}, **{f"item-{i}": v[i] for i in range(N_PAIRS)}}
    model = CountingModel(images, texts)
    pair_shards = write_pairs(tmp_path, N_PAIRS, first_code=1000)
    results = evaluate(model, WordTokenizer(model.vocab), zeroshot_dir=str(labelled), heldout=pair_shards,
                       batch_size=7)
    assert results["retrieval"]["image_to_text_R@1"] == 1.0 and results["zeroshot"]["top1"] == 1.0
    # the 48 labelled pictures are encoded once, for zero-shot and the probe (7 × 6 + 6); retrieval's 400 pairs
    # (7 × 57 + 1)
    assert model.image_batches == [7] * 6 + [6] + [7] * 57 + [1]
    assert max(model.text_batches) == 7 and sum(model.text_batches) == len(CLASSES) * len(TEMPLATES) + N_PAIRS


@pytest.mark.parametrize(("run", "scored", "trained"), [
    ((2, 0.0), (2, 0.0), False),   # the run's own side
    ((2, 0.0), (1, 0.0), False),   # fewer of the same last shards
    ((2, 0.0), (3, 0.0), True),    # a shard the run trained on
    ((2, 0.0), (0, 0.05), True),   # a share of every shard, trained ones included
    ((0, 0.1), (0, 0.05), False),  # a smaller share by the same key hash
    ((0, 0.1), (0, 0.2), True),
    ((0, 0.1), (1, 0.0), True),    # a whole shard, most of it trained on
    ((0, 0.0), (0, 0.0), True),    # the run held out nothing: every pair was trained on
    ((0, 0.0), (1, 0.0), True),
    ((2, 0.0), (0, 0.0), True),    # nothing held out asked for: all of the data
])
def test_scoring_another_holdout_than_the_runs_says_when_it_may_score_trained_pairs(run, scored, trained):
    from trainer.evaluate import may_score_trained

    assert may_score_trained(run, scored) is trained


def test_another_holdout_than_the_runs_is_scored_with_a_warning(tmp_path, caplog):
    """The held-out side of another holdout than the run's is scored, and said to be no held-out figure."""
    from trainer.evaluate import heldout_of

    for i in range(4):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    saved = {"data": {"holdout_shards": 1}}
    split, trained = heldout_of(str(tmp_path), saved)
    assert not trained and [p.name for p in split.heldout] == ["00003.tar"]
    with caplog.at_level("WARNING", logger="trainer.evaluate"):
        split, trained = heldout_of(str(tmp_path), saved, holdout_shards=2)
    assert trained and [p.name for p in split.heldout] == ["00002.tar", "00003.tar"]
    assert "may have trained on" in caplog.text


def test_other_data_than_the_runs_is_scored_as_including_trained_pairs(tmp_path, monkeypatch, caplog):
    """The checkpoint records the shards the run trained on: ``--data`` whose training side (by the run's holdout) is
    other shards may hold out pairs the run trained on (here the folder lacks the run's last shard, so its "last
    shard" is one the run trained on), and its retrieval says so."""
    import shutil

    import trainer.evaluate as ev
    from trainer.data import shards_digest

    shards = write_pairs(tmp_path / "build", 30, per_shard=10)
    v = random_vectors(30, 0)
    model = StandInModel({i: v[i] for i in range(30)}, {f"item-{i}": v[i] for i in range(30)})
    ckpt = {"config": {"data": {"holdout_shards": 1}}, "step": 5,
            "data": {"shards": 2, "shards_digest": shards_digest(shards[:2]), "steps_per_epoch": 1}}
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a: (model, WordTokenizer(model.vocab), ckpt))
    checkpoint = tmp_path / "step_00000005.pt"
    checkpoint.write_bytes(b"")
    subset = tmp_path / "subset"
    subset.mkdir()
    for shard in shards[:2]:
        shutil.copy(shard, subset)
    for data, trained in ((shards[0].parent, False), (subset, True)):
        out = tmp_path / f"{data.name}.json"
        caplog.clear()
        with caplog.at_level("WARNING", logger="trainer.evaluate"):
            assert ev.main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]) == 0
        result = json.loads(out.read_text())["retrieval"]
        assert result["pairs"] == 10 and result.get("includes_trained_pairs", False) is trained
        said = "is not the data the run trained on (1 training shards, the run trained on 2)" in caplog.text
        assert said is trained


@pytest.mark.parametrize(("size", "resized", "offset"), [
    ((675, 450), (336, 224), (56, 0)),   # long side int(224 * 675 / 450) = 336
    ((385, 256), (336, 224), (56, 0)),   # int(336.875): truncated, not rounded
    ((301, 200), (337, 224), (56, 0)),   # (337 - 224) / 2 = 56.5 rounds to even, as torchvision's CenterCrop
    ((200, 303), (224, 339), (0, 58)),   # 57.5 rounds to 58
    ((224, 224), (224, 224), (0, 0)),
])
def test_the_evaluation_view_is_open_clips(size, resized, offset):
    """open_clip evaluates (and DataComp and LAION scored) through torchvision's ``Resize(224)`` and
    ``CenterCrop(224)``: the short side to 224 with the long one truncated, bicubic, then the centre at offsets
    rounded half to even. The view must be those pixels exactly, so that an open_clip model's scores here are
    its scores there."""
    from trainer.data import center_square

    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    want = img.resize(resized, Image.Resampling.BICUBIC) if resized != size else img
    want = want.crop((offset[0], offset[1], offset[0] + 224, offset[1] + 224))
    assert np.array_equal(np.asarray(center_square(img, 224)), np.asarray(want))


def test_an_unreadable_image_in_the_labelled_folder_is_skipped_and_counted(labelled, tmp_path):
    """One broken file among the labelled pictures: the rest are scored, the skip is counted in the results."""
    import shutil

    folder = tmp_path / "labelled"
    shutil.copytree(labelled, folder)
    (folder / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    model, tok = class_model(lambda c, k: c)
    z = zero_shot(model, tok, folder)
    assert z["skipped_images"] == 1 and z["images"] == len(CLASSES) * PER_CLASS and z["top1"] == 1.0
    assert linear_probe(model, folder)["fit"] + linear_probe(model, folder)["test"] == len(CLASSES) * PER_CLASS



def test_clip_benchmark_style_class_lists_and_templates_read_the_same(labelled, tmp_path):
    """clip_benchmark and open_clip list class names in the folders' sorted order and write templates with
    ``{c}``: the same folder described that way scores the same as with ``{folder: name}`` and ``{}``."""
    import shutil

    folder = tmp_path / "labelled"
    shutil.copytree(labelled, folder)
    in_folder_order = [NAMES[CLASSES.index(c)] for c in sorted(CLASSES)]  # c0, c1, c10, c11, c2, …
    (folder / "zeroshot.json").write_text(json.dumps({"classnames": in_folder_order,
                                                      "templates": [t.replace("{}", "{c}") for t in TEMPLATES]}))
    model, tok = class_model(lambda c, k: (c + 1) % len(CLASSES) if k == 0 else c)
    assert zero_shot(model, tok, folder) == zero_shot(model, tok, labelled)
    (folder / "zeroshot.json").write_text(json.dumps({"classnames": in_folder_order[:-1]}))
    with pytest.raises(ValueError, match="lists 11 class names for 12 class folders"):
        zero_shot(model, tok, folder)
    with pytest.raises(ValueError, match=r"write the class name as \{\} or \{c\}"):
        zero_shot(model, tok, labelled, templates=["a photo of {name}"])



def test_a_folder_of_unreadable_images_is_a_clear_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.png").write_bytes(b"not a picture")
    model, tok = class_model(lambda c, k: c)
    with pytest.raises(ValueError, match=r"no readable image in its class folders \(2 skipped\)"):
        zero_shot(model, tok, tmp_path)


def test_zero_shot_accuracy_is_k_over_n_in_float64(labelled):
    """44 of 48 right is exactly 44/48: float32 rounding would make equal gains on different seeds differ by
    ~1e-8, a spread the experiment report could take for an interval."""
    model, tok = class_model(lambda c, k: 2 if c == 7 else c)
    z = zero_shot(model, tok, labelled)
    assert z["top1"] == 44 / 48 and z["top5"] == 1.0


def _probe_folder(root: Path, per_class: dict[str, int]) -> StandInModel:
    """Class folders of ``per_class`` images whose features share one large direction and vary most along one that
    says nothing of the class, so that the probe's C matters (see the test above): C = 1 gets the test half
    wrong where the cross-validated C does not."""
    rng = np.random.default_rng(0)
    shared, spread = rng.normal(size=DIM) * 10, rng.normal(size=DIM)
    offsets = rng.normal(size=(len(per_class), DIM)) * 0.3
    images, i = {}, 0
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for k in range(n):
            v = shared + offsets[c] + spread / np.linalg.norm(spread) * rng.normal() * 3 + rng.normal(size=DIM) * 0.02
            images[i] = torch.as_tensor(v).float()
            (root / name / f"{k:02d}.png").write_bytes(png(i))
            i += 1
    return StandInModel(images, {})


def test_a_rare_class_is_left_out_of_choosing_c_not_the_reason_to_skip_it(tmp_path, caplog):
    """A class of 2 images (1 in the fit half) cannot be split into folds: C is cross-validated over the other
    classes, with a warning naming it, instead of C = 1 for everyone."""
    model = _probe_folder(tmp_path, {"k0": 12, "k1": 12, "k2": 12, "k3": 12, "rare": 2})
    with caplog.at_level("WARNING", logger="trainer.evaluate"):
        p = linear_probe(model, tmp_path)
    assert p["C"] >= 100 and p["C_rare_classes"] == ["rare"] and "C_fallback" not in p
    assert p["top1"] >= 24 / 25  # the 24 common test images right: C = 1 got 0.875 of them
    assert any("rare" in r.getMessage() and "fewer than 3 images" in r.getMessage() for r in caplog.records)


def test_a_probe_that_cannot_cross_validate_says_it_fell_back(tmp_path):
    model = _probe_folder(tmp_path, {"k0": 2, "k1": 2, "k2": 2})  # 1 fit image per class: no fold to hold out
    p = linear_probe(model, tmp_path)
    assert p["C"] == 1.0 and "C = 1" in p["C_fallback"] and p["fit"] == 3


def test_undecodable_held_out_images_are_counted(tmp_path):
    """A broken image among the held-out pairs is skipped and counted in the result, as zero-shot counts its own."""
    shards = write_pairs(tmp_path / "good", 20)
    with tarfile.open(shards[0], "a") as tf:
        for ext, data in (("png", b"\x89PNG\r\n\x1a\n not a picture"), ("txt", b"a picture of item-3")):
            info = tarfile.TarInfo(f"999999.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    model, tok = retrieval_model(list(range(N_PAIRS)))
    r = retrieval(model, tok, shards)
    assert r["pairs"] == 20 and r["skipped_images"] == 1 and r["image_to_text_R@1"] == 1.0
    only_broken = tmp_path / "broken" / "00000.tar"
    only_broken.parent.mkdir()
    with tarfile.open(only_broken, "w") as tf:
        for ext, data in (("png", b"not a picture"), ("txt", b"a picture of item-1")):
            info = tarfile.TarInfo(f"000001.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert retrieval(model, tok, [only_broken]) == {"pairs": 0, "skipped_images": 1}
