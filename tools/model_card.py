"""Write a model card (Markdown) for a trained model from the files its commands produced.

Reads the run folder (config.json, log.csv, the model's metadata) and the evaluation JSON written by
``facemtl evaluate MODEL --out DIR``, so every figure in the card is copied by a program, not by hand.

    python tools/model_card.py --model weights/facemtl-deepid2.pt --run runs/deepid2 \\
        --evaluation runs/deepid2-eval/evaluation.json --out weights/facemtl-deepid2.md
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
from pathlib import Path
from typing import Any

import torch

from facemtl.evaluate.suite import headline
from facemtl.model.multitask import load_model
from facemtl.train.config import RunConfig, load_config

CONFIG = "configs/deepid2.toml"
"""The recipe's config file; a card lists the settings where its run differed from it."""
SET_BY_TRAINER = {"model.num_identities"}
"""Settings the trainer fills in from the data, not given on the command line."""

LABELS = {
    "mtfl_nme_%": "MTFL test (2,995 AFLW faces): mean landmark error, % of inter-ocular distance",
    "mtfl_failure_%": "MTFL test: failure rate (error > 10%)",
    "mtfl_gender_%": "MTFL test: gender accuracy",
    "mtfl_smile_%": "MTFL test: smile accuracy",
    "mtfl_glasses_%": "MTFL test: glasses accuracy",
    "celeba_attr_mean_%": "CelebA test (660 images): mean accuracy over the 40 attributes",
    "celeba_verif_%": "CelebA test identities: verification accuracy (10-fold; 9,570 same + 9,570 different pairs)",
    "celeba_tar@far1e-2_%": "CelebA test identities: TAR at FAR = 1e-2",
    "wild_verif_%": "celeba_wild test, end to end (1,162 photos; 13,925 + 13,925 pairs): verification accuracy",
    "wild_tar@far1e-2_%": "celeba_wild test: TAR at FAR = 1e-2 (pairs with a face in both photos)",
    "utkface_age_mae_years": "UTKFace test (2,371 faces of the committed split): age, mean absolute error in years",
    "utkface_gender_%": "UTKFace test: gender accuracy",
}
TEACHER_TERMS = (
    "dlib's ResNet face descriptor (`dlib_face_recognition_resnet_model_v1`, 128-D), released into the public "
    "domain by its author and run through the `face_recognition_models` package; it was trained on about 3 "
    "million faces of 7,485 people from FaceScrub, VGG Face and photos of celebrities found on the web, so "
    "CelebA's celebrities may be among its people and CelebA figures may flatter teacher and student alike "
    "(celeba_wild's test people and UTKFace are reported beside them)")

OPTIMIZERS = {"sgd": "SGD", "adamw": "AdamW"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="the training run folder")
    parser.add_argument("--evaluation", type=Path, required=True, help="evaluation.json of facemtl evaluate")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wall", type=float, default=None, help="measured wall time of the whole run, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the card's facts as JSON")
    parser.add_argument("--compare", type=Path, default=None,
                        help="an earlier run folder: its validation figures beside this run's at the same epoch")
    parser.add_argument("--compare-epoch", type=int, default=None, help="the epoch compared (default: the last both have)")
    parser.add_argument("--unrefined", type=Path, default=None,
                        help="evaluation.json of `facemtl evaluate MODEL --refine 0`: shows what re-alignment adds")
    parser.add_argument("--compare-test", type=Path, nargs=2, default=None, metavar=("EARLIER", "THIS"),
                        help="evaluation.json of the earlier run's model and of this run's, evaluated alike")
    parser.add_argument("--unprojected", type=Path, default=None,
                        help="evaluation.json of the same weights without the embedding's projection")
    parser.add_argument("--note", default=None,
                        help="a paragraph under Training: history the run's files do not record")
    parser.add_argument("--config", default=CONFIG, help="the recipe the run's settings are listed against")
    parser.add_argument("--previous", type=Path, default=None,
                        help="the card JSON of the model this one replaces: its test figures beside these")
    args = parser.parse_args()
    model = load_model(args.model)
    cfg = json.loads((args.run / "config.json").read_text())
    data = _data_sets(cfg)
    rows = list(csv.DictReader(open(args.run / "log.csv")))
    ev = json.loads(args.evaluation.read_text())
    figures = headline(ev)
    unrefined, unprojected = _headline(args.unrefined), _headline(args.unprojected)
    meta = model.meta
    projection = json.loads(meta.get("verification_projection", "{}"))
    wall = args.wall if args.wall is not None else float(meta.get("wall_s", 0.0))
    views = 2 if cfg["data"]["mtfl_verification"] == "views" else 1     # as the trainer's batch plan
    speed = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
    lines = [
        f"# Model card: {args.model.name}",
        "",
        f"Model id `{model.model_id}` (the gallery refuses embeddings of other ids). "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{args.model.stat().st_size / 2**20:.1f} MiB.",
        "",
        "## What it is",
        f"- Shared CNN `{cfg['model']['trunk']}` (sharing `{cfg['model']['sharing']}`) on "
        f"{cfg['model']['input_size']}x{cfg['model']['input_size']} RGB crops aligned onto the five-point "
        "template (`facemtl.align`) from the MTCNN detector's landmarks (`weights/mtcnn.pt`).",
        f"- Heads: identity softmax over {model.config.num_identities} training identities, "
        f"{model.config.embedding_dim}-D L2-normalised embedding ({_embedding_source(cfg)}), 5 landmarks, "
        "CelebA's 40 attributes, 5-way head pose" + (", age in years (a distribution over 0..100, its expected "
                                                      "value)" if "age" in model.config.tasks else "") + "."
        + _hidden_note(model.config.head_hidden),
        f"- Verification threshold stored in the file: cosine >= {model.config.verification_threshold:.4f}"
        + (" (between projected embeddings, see below), " if projection.get("method", "none") != "none" else ", ") +
        f"the threshold with the best accuracy over all pairs of the CelebA val identities (never seen in "
        f"training, disjoint from test): {_threshold_note(meta)}. The test figures below choose their "
        "thresholds fold by fold (10-fold protocol).",
        "",
        "## Training",
        f"- Data: {data}.",
        f"- Command: {_command(cfg, meta, args.config)} ({cfg['train']['epochs']} epochs, "
        f"{meta.get('steps')} steps of batch "
        f"{cfg['train']['identities_per_batch'] * cfg['train']['images_per_identity'] + views * cfg['train']['others_per_batch']}"
        f", seed {cfg['train']['seed']}).",
        f"- Hardware: {platform.processor() or platform.machine()} CPU, {meta.get('device')}, "
        f"{torch.get_num_threads()} threads; wall time {wall / 3600:.2f} h; "
        f"median throughput {sorted(speed)[len(speed) // 2] if speed else 0:.0f} samples/s.",
        f"- Loss weighting `{cfg['train']['weighting']}` {cfg['train']['weighting_options']}, landmark loss "
        f"`{cfg['train']['landmark_loss']}`, {OPTIMIZERS[cfg['train'].get('optimizer', 'sgd')]} "
        f"lr {cfg['train']['lr']} (cosine), weight decay {cfg['train']['weight_decay']}.",
        *([f"- {args.note}"] if args.note else []),
        "",
        "## Evaluation",
        f"Command: `facemtl evaluate {args.model} --out DIR` (detect -> align -> CNN, mirror averaging "
        f"{'on' if ev.get('flip_averaging', True) else 'off'}, {ev.get('refine_passes', 0)} re-alignment pass(es) on "
        "the CNN's own landmarks before landmarks and attributes are read). Every figure below is copied from its `evaluation.json` by `tools/model_card.py` (this card: "
        f"`python tools/model_card.py --model {args.model} --run {args.run} --evaluation {args.evaluation} "
        f"--out {args.out}" + (f" --compare {args.compare}" if args.compare else "")
        + (f" --compare-epoch {args.compare_epoch}" if args.compare_epoch is not None else "")
        + (f" --unrefined {args.unrefined}" if args.unrefined else "")
        + (f" --unprojected {args.unprojected}" if args.unprojected else "")
        + (" --compare-test " + " ".join(map(str, args.compare_test)) if args.compare_test else "")
        + (f" --config {args.config}" if args.config != CONFIG else "")
        + (f" --previous {args.previous}" if args.previous else "") + (f" --json {args.json}" if args.json else "")
        + (f" --note {shlex.quote(args.note)}" if args.note else "") + "`).",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    previous = None if args.previous is None else json.loads(args.previous.read_text())
    if previous is not None:
        lines[-2:] = [f"| figure | value | {previous['model_id']} |", "|---|---:|---:|"]
    for key, value in figures.items():
        old = None if previous is None else previous["evaluation"].get(key)
        before = "" if previous is None else (" - |" if old is None else f" {old:.2f} |")
        lines.append(f"| {LABELS.get(key, key)} | {value:.2f} |{before}")
    if previous is not None:
        lines += ["", f"The last column: the model this one replaces ({previous['model']}), from its card's JSON, "
                      "measured by the same command."]
    if cfg["data"].get("teacher"):
        lines += ["", "## Learning from a teacher", f"- Teacher: {TEACHER_TERMS}.",
                  "- `facemtl teach` ran it once on every training face (the face and its mirror image, its own "
                  "5-point alignment inside a box placed on the table's landmarks); test faces are refused. The "
                  "student's embedding learns the centred, L2-normalised descriptor as the masked task `distill` "
                  "(1 - cosine + the batch's similarity matrix against the teacher's); faces without a target "
                  "are masked out.", *_teacher_coverage(args.run)]
    lines += _groups(ev)
    if unrefined is not None:
        detector_nme = ev.get("mtfl", {}).get("detector_landmarks_nme_percent", float("nan"))
        lines += ["", *_refinement(figures, unrefined, args.model, detector_nme)]
    if unprojected is not None:
        lines += ["", *_projection(figures, unprojected, projection)]
    if args.compare is not None:
        lines += ["", *_comparison(args.run, args.compare, args.compare_epoch)]
    if args.compare_test is not None:
        lines += ["", *_test_comparison(*args.compare_test)]
    celeba, wild, mtfl = ev.get("celeba", {}), ev.get("wild", {}), ev.get("mtfl", {})
    oracle = mtfl.get("landmarks_annotated_alignment", {})
    lines += [
        "",
        f"Detector misses: CelebA test {celeba.get('detector_misses')} of {celeba.get('images')} (aligned "
        f"at the set's mean detected position instead), MTFL test {mtfl.get('detector_misses')} of "
        f"{mtfl.get('faces')} (likewise), celeba_wild test {wild.get('photos_without_face')} of "
        f"{wild.get('photos')} photos without a face (their {wild.get('pairs_without_face')} pairs count as "
        "wrong answers). For reference, the detector's own landmarks score "
        f"{mtfl.get('detector_landmarks_nme_percent', float('nan')):.2f}% NME on MTFL test; on crops aligned on "
        "the annotated points themselves (an oracle no user has, in the same evaluation.json) the landmark head "
        f"scores {oracle.get('mean_nme_percent', float('nan')):.2f}% with "
        f"{oracle.get('failure_rate_percent', float('nan')):.2f}% failures: what is left above that is the "
        "head's error, not the alignment's." + _offset_note(ev),
        "",
        "## Terms and limits",
        "- Trained on CelebA (non-commercial research and educational use only), MTFL (CUHK; images from AFLW "
        "and the CUHK face alignment set; research use) and CelebA's in-the-wild photos: these weights inherit "
        "those terms. Cite Liu et al. ICCV 2015 (CelebA), Zhang et al. ECCV 2014 (MTFL/TCDCN), Koestinger et "
        "al. 2011 (AFLW) and Zhang et al. 2016 (MTCNN).",
        "- Demographics: CelebA and celeba_wild are celebrities (mostly young adults, a majority of light-skinned "
        "people, many with make-up and posed photos); MTFL adds web and LFW faces. Accuracy on other groups, on "
        "children and on non-frontal or low-light faces is not measured here and is likely lower.",
        ("- Recognition was learned from a teacher's descriptor of the training faces, not from its millions of "
         "faces: do not use the verification output for decisions about people; it is a research baseline."
         if cfg["data"].get("teacher") else
         "- Recognition was learned from 390 identities only: do not use the verification output for decisions "
         "about people; it is a research baseline."),
        "- Attributes such as 'Attractive' or 'Young' are CelebA's annotators' subjective labels and carry "
        "their biases.",
        *(["- UTKFace (Zhang, Song, Qi, CVPR 2017) is for non-commercial research only. Age and gender read from "
           "a face are estimates: report them as such, never decide about a person by them; a child's gender is "
           "hardly in the face at all (see the table by age band)."]
          if cfg["data"].get("utkface") or "age" in model.config.tasks else []),   # an earlier stage may hold it
        *([f"- The embedding learned from {TEACHER_TERMS}."] if cfg["data"].get("teacher") else []),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "model": str(args.model), "model_id": model.model_id, "trunk": cfg["model"]["trunk"],
            "data": data,
            "command": _command(cfg, meta, args.config), "epochs": cfg["train"]["epochs"], "steps": meta.get("steps"),
            "wall_s": wall, "verification_threshold": model.config.verification_threshold,
            "evaluation_command": f"facemtl evaluate {args.model} --out DIR", "evaluation": figures,
            "refine_passes": ev.get("refine_passes", 0),
            "evaluation_refine_0": unrefined,
            "verification_projection": projection,
            "evaluation_without_projection": unprojected,
            "utkface_groups": ev.get("utkface", {}).get("groups"),
            }, indent=1) + "\n")
    print(f"wrote {args.out}")


def _headline(path: Path | None) -> dict[str, float] | None:
    """The headline figures of an evaluation.json (None without a file)."""
    return None if path is None else headline(json.loads(path.read_text()))


def _mtfl_offset(ev: dict[str, Any]) -> list[float] | None:
    """The mean signed (x, y) offset of the predicted points from MTFL test's annotations, where recorded."""
    return ev.get("mtfl", {}).get("landmarks", {}).get("mean_offset_px")


def _offset_note(ev: dict[str, Any]) -> str:
    """The card's sentence on the MTFL test offset (empty where the evaluation has none)."""
    offset = _mtfl_offset(ev)
    if offset is None:
        return ""
    return (f" Predicted points sit on average ({offset[0]:+.2f}, {offset[1]:+.2f}) px (x, y) from the test "
            "annotations; on MTFL training photos aligned on their annotations the head sits within 0.5 px of "
            "them in x and at most 1 px above them in y (`tests/test_analyzer.py`), so AFLW's annotations lie "
            "further right and lower than the training sets' do.")


def _hidden_note(hidden: dict[str, int]) -> str:
    """Which heads have a hidden layer (model.head_hidden), in a sentence; empty when all are linear."""
    if not hidden:
        return ""
    widths = ", ".join(f"{task} {width}" for task, width in hidden.items())
    return f" Hidden layers (`model.head_hidden`): {widths}; the other heads are linear."


def _threshold_note(meta: dict[str, str]) -> str:
    found = json.loads(meta.get("verification_threshold", "{}"))
    if "val_accuracy" not in found:
        return "no calibration record in the file"
    return f"{100 * found['val_accuracy']:.2f}% accuracy there (`facemtl ship`)"


def _data_sets(cfg: dict[str, Any]) -> str:
    """The training data of a run's config, in words."""
    d = cfg["data"]
    parts = [text for on, text in (
        (d["celeba"], "CelebA train split (152 identities, identities + 40 attributes; 2 images per identity held "
                      "out for validation)"),
        (d["wild"], "celeba_wild train (238 identities, whole photos through our detector)"),
        (d["mtfl"], "MTFL training.txt (landmarks, gender, smile, glasses, pose; 5% held out for validation)"),
        (d.get("utkface"), "UTKFace's train split (18,963 faces of configs/splits/utkface.csv: age, and gender as "
                           "CelebA's Male)")) if on]
    return "; ".join(parts)


def _teacher_coverage(run: Path) -> list[str]:
    """The line of the run's log that says how many faces the teacher labelled, where the log has it."""
    log = run.parent / f"{run.name}.log"
    found = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.startswith("facemtl train:")] if log.is_file() else []
    return [f"- The run's first line: `{found[0]}`."] if found else []


def _groups(ev: dict[str, Any]) -> list[str]:
    """UTKFace's per-group table (age MAE, gender accuracy), where the evaluation has it."""
    groups = ev.get("utkface", {}).get("groups")
    if not groups:
        return []
    aged = "age_mae" in groups["all"]
    lines = ["", f"## {'Age and gender' if aged else 'Gender'} by group (UTKFace test)",
             "Race is UTKFace's label, used to measure only; the model never predicts it.", "",
             f"| group | faces |{' age MAE (years) |' if aged else ''} gender accuracy (%) |",
             f"|---|---:|{'---:|' if aged else ''}---:|"]
    cells = [("all", groups["all"])] + [(f"{kind} {name}", cell) for kind in ("age_band", "gender", "race")
                                         for name, cell in groups[kind].items()]
    for name, cell in cells:
        age = f" {cell['age_mae']:.2f} |" if aged else ""
        lines.append(f"| {name.replace('age_band', 'age').replace('_', ' ')} | {cell['faces']} |{age} "
                     f"{100 * cell.get('gender_accuracy', float('nan')):.2f} |")
    return lines


def _embedding_source(cfg: dict[str, Any]) -> str:
    """What taught the embedding: the labelled recognition losses, a teacher, or both (by their weights)."""
    weights = cfg["train"].get("weighting_options", {}).get("weights", {})
    recognition = [task for task in ("identity", "verification") if task in cfg["model"]["tasks"]]
    labelled = bool(recognition) and (cfg["train"]["weighting"] != "static"
                                      or any(weights.get(task, 1.0) > 0 for task in recognition))
    taught = bool(cfg["data"].get("teacher"))
    if taught and not labelled:
        return "learned from the teacher's descriptor (task `distill`)" + (
            "; identification and contrastive loss at weight 0" if recognition else "")
    return "DeepID2 contrastive loss" + (" and the teacher's descriptor (task `distill`)" if taught else "")


def _command(cfg: dict[str, Any], meta: dict[str, str], config: str = CONFIG) -> str:
    """The training command(s): the settings where the run differs from ``config`` as ``--set``, and a change
    of schedule made on resume (``--reschedule``)."""
    steps = json.loads(meta.get("reschedules", "[]"))
    base = json.loads(json.dumps(_flat(load_config(config).to_dict())))
    run = _flat(cfg)
    sets = [shlex.quote(f"{k}={_toml(v)}") for k, v in run.items()
            if k not in {"out_dir", *SET_BY_TRAINER} and base.get(k) != v and not (steps and k == "train.epochs")]
    train = f"facemtl train --config {config} --out {cfg['out_dir']}" + "".join(f" --set {s}" for s in sets)
    if not steps:
        return f"`{train}`"
    parts = [f"`{train} --set train.epochs={steps[0]['from_epochs']}` to epoch {steps[0]['at_epoch']}"]
    parts += [f"then `{train} --set train.epochs={s['to_epochs']} --reschedule`"
              + (f" to epoch {steps[i + 1]['at_epoch']}" if i + 1 < len(steps) else "")
              for i, s in enumerate(steps)]
    return ", ".join(parts) + " (the cosine learning rate follows the new length from the change on)"


def _toml(value: Any) -> str:
    """A config value as a TOML literal, as ``--set`` reads it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _changes(figures: dict[str, float], before: dict[str, float], label: str, after: str = "default") -> list[str]:
    """A table of the figures that differ from ``before`` (the ``label`` column), with the change."""
    lines = [f"| figure | {label} | {after} | change |", "|---|---:|---:|---:|"]
    for key, value in figures.items():
        if key in before and f"{before[key]:.2f}" != f"{value:.2f}":
            lines.append(f"| {LABELS.get(key, key)} | {before[key]:.2f} | {value:.2f} | {value - before[key]:+.2f} |")
    return lines


def _refinement(figures: dict[str, float], before: dict[str, float], model: Path, detector_nme: float) -> list[str]:
    """The figures with and without re-alignment on the CNN's landmarks, where they differ."""
    return ["## What re-alignment adds", "",
            f"MTFL training crops are aligned on the annotated landmarks, test crops on the detector's ({detector_nme:.1f}% "
            "NME on MTFL test): re-aligning each test face on the CNN's own landmarks brings the crop closer to what "
            f"training saw. Against `facemtl evaluate {model} --refine 0` (detector alignment only):", "",
            *_changes(figures, before, "--refine 0"), "",
            "Embeddings (and so every verification figure) always come from the detector-aligned crop, the "
            "alignment identity training saw."]


def _projection(figures: dict[str, float], before: dict[str, float], fit: dict[str, Any]) -> list[str]:
    """What the embedding's projection (fit by facemtl ship on the training identities) adds."""
    tried = ", ".join(f"{k}: {100 * v:.2f}%" for k, v in fit.get("val_accuracy_by_shrinkage", {}).items())
    return ["## What the embedding's projection adds", "",
            f"`facemtl ship --config {CONFIG}` fits a {fit.get('method', 'no')} projection "
            f"on {fit.get('fit_on', 'nothing')} (`facemtl.train.projection`): cosine similarity then discounts "
            "the directions along which one person's faces vary, as DeepID2's Joint Bayesian scoring did. "
            f"The shrinkage is chosen on CelebA val pairs (accuracy by shrinkage: {tried}); it is "
            f"{fit.get('shrinkage')}. Against the same weights without it (`facemtl ship` without "
            "`--config`, then `facemtl evaluate`):", "",
            *_changes(figures, before, "no projection")]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "weighting_options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _comparison(run: Path, other: Path, epoch: int | None) -> list[str]:
    """Validation figures of two runs at one epoch, and every config value in which they differ."""
    rows = {name: {int(r["epoch"]): r for r in csv.DictReader(open(d / "log.csv"))}
            for name, d in (("this run", run), ("earlier run", other))}
    epoch = epoch if epoch is not None else min(max(r) for r in rows.values())
    defaults = _flat(RunConfig().to_dict())       # settings added since the earlier run had their defaults there
    a, b = ({**defaults, **_flat(json.loads((d / "config.json").read_text()))} for d in (run, other))
    skip = {"out_dir", "train.threads", "train.num_workers"}
    diff = [f"`{k}` {b.get(k)!r} -> {a.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in skip and a.get(k) != b.get(k)]
    keys = [k for k in rows["this run"][epoch] if k.startswith("val_")]
    lines = [f"## What helped: this recipe against the earlier one ({other.name}), validation after epoch {epoch}",
             "", "Changed together: " + "; ".join(diff) + ".", "",
             "| validation figure | earlier run | this run | change |", "|---|---:|---:|---:|"]
    for k in keys:
        x, y = float(rows["earlier run"][epoch][k]), float(rows["this run"][epoch][k])
        lines.append(f"| {k[4:]} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
    final = all(epoch == max(r) for r in rows.values())
    lines += ["", f"(Read from both runs' `log.csv` by `tools/model_card.py --compare {other}`; NME: lower is "
              "better. " + ("Both runs' last epoch: this compares the finished models.)" if final else
                            "The runs' cosine schedules differ in length, so this compares recipes early in "
                            "training, not final models.)")]
    return lines


def _test_comparison(other: Path, this: Path) -> list[str]:
    """Test figures of the earlier run's model and of this one, from two evaluation.json files."""
    evaluations = [json.loads(p.read_text()) for p in (other, this)]
    before, after = (headline(e) for e in evaluations)
    lines = ["Test figures, both through `facemtl evaluate` with the same settings "
             f"(`{other}` against `{this}`):", "", *_changes(after, before, "earlier run", "this run")]
    offsets = [_mtfl_offset(e) for e in evaluations]
    if None not in offsets:
        (ex, ey), (tx, ty) = offsets
        lines += ["", f"Mean offset of the predicted points from MTFL test's annotations (x, y): earlier run "
                  f"({ex:+.2f}, {ey:+.2f}) px, this run ({tx:+.2f}, {ty:+.2f}) px."]
    return lines


if __name__ == "__main__":
    main()
