"""``fit-textile-check``: a linear head on the textile check's ImageNet outputs, fitted to a line's labelled photos.

The textile check's class list (:mod:`sorting.serving.textile_check`) needs no labels, but ImageNet has no class
for a plain black or white piece of cloth and calls it something else. A hub that has labelled some
of its own photos (the boxes CSV of ``evaluate-detection``) can fit a logistic regression on the 1,000
log-probabilities instead: the line's segmentation runs on each photo exactly as ``serve`` runs it (without the
check), each garment detection is a crop, labelled a garment when it matches a garment box (IoU >= ``match_iou``)
better than any non-garment box, else not. Its threshold keeps ``keep`` of the garments *out of fold*: the photos
are split into ``folds`` groups of scenes (a photo's number // ``group_size``: consecutive photos show one scene),
each fold scored by a head fitted on the others; the area under the curve and the share of non-garments removed
at that threshold are written with the head, then the head is fitted on every crop. Beside the head go a plot of
the out-of-fold scores and a sheet of the crops the head gets wrong out of fold (:mod:`sorting.apps.head_mistakes`).
``--write-line`` points the line config at the new head.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sorting.apps.detection_data import (
    iter_photos,
    merge_box_files,
    photo_frames,
    read_boxes_csv,
)
from sorting.apps.head_mistakes import mistakes_sheet
from sorting.datasets.box_labels import photo_group, read_subset
from sorting.errors import ConfigError, DataError
from sorting.serving.belt_calibration import open_line_for_rewrite, relative_to_line, write_line
from sorting.serving.colour_foreground import FrameError
from sorting.serving.detection_eval import GARMENT, iou_matrix
from sorting.serving.line_config import load_line_config
from sorting.serving.line_segmentation import LineSegmentation
from sorting.serving.non_garment import HAND, OBJECT
from sorting.serving.textile_check import (
    MAX_CONTEXT,
    MIRRORS,
    ClassSum,
    HeadInputs,
    TextileCheck,
    TextileCheckConfig,
    TextileHead,
)

log = logging.getLogger(__name__)

NON_GARMENT_KINDS = (HAND, OBJECT)
# fewer labelled examples of a kind than this in the set-up photos and the head is as good as blind to it: in scene
# cross-validation by blocks of the dev photos (benchmarks/belt_cross_validation.py --blocked), the fold set up on
# photos without a labelled object took 16 of the 45 hands and objects of its own photos for garments (the others 0)
MIN_SEEN = 5


@dataclass
class HeadFitConfig:
    """What to fit on (see ``textile-sorter fit-textile-check --help``)."""

    line: Path
    photos: Path
    boxes: Path
    out: Path
    extra_labels: Path | None = None  # non-garment labels (image,x0,y0,x1,y1,kind)
    subset: str | None = None  # FILE or FILE.json:KEY: only these photos
    keep: float = 0.95  # share of garments the threshold keeps, out of fold
    match_iou: float = 0.3  # a detection is a garment when it overlaps a garment box this much (loose boxes)
    folds: int = 5
    group_size: int = 10
    regularisation: float = 0.01  # inverse strength C of the logistic regression (1,000 inputs, a few hundred crops)
    # crop side: the network's native 224 px; 128 px costs a third and ties with it in scene cross-validation on
    # the conveyor's development photos, but took more hands and objects for garments (serving/REAL_BELT.md)
    input_size: int = 224
    # the crop: the detection's box grown by this about its centre, so the network sees the thing's outline against
    # the belt too; chosen by scene cross-validation on the conveyor's development photos (serving/REAL_BELT.md): 1.2
    # against 1.0 / 1.1 / 1.35 / 1.5
    context: float = 1.2
    # the class floor (textile_check.class_floor) is set where this share of the labelled garment crops falls below it:
    # below it ImageNet's textile classes see no cloth at all, whatever the head says. 0.5% rather than 1%: the point
    # is estimated from a few hundred crops, and at 1% it cost about 2% of garments out of fold (dark ones) for no
    # object more caught (scene CV on the conveyor's development photos, serving/REAL_BELT.md)
    floor_share: float = 0.005
    # the check's network to fit on (an INT8 file from export-textile-check --int8); None: the line's own
    check_model: Path | None = None
    # what the head reads of each crop: the ImageNet log-probabilities, or the network's pooled features
    # (standardised, at the same regularisation)
    inputs: HeadInputs = "logprobs"
    # fit on each crop and its mirror images too, and have the line score their mean where the crop alone is near a
    # threshold (textile_check.mirrors_margin): one view's fold shadow or glare weighs a third. Opt-in: in scene CV of
    # the whole set-up on the conveyor's development photos it gained about a point of recall and less of precision,
    # for about 1.6 times the line's time per photo (serving/REAL_BELT.md, "Mirror images")
    mirrors: bool = False
    progress: bool = True


@dataclass
class Crops:
    """The ImageNet log-probabilities of every garment detection, its label (1: a garment) and scene group."""

    logprobs: np.ndarray  # (n, 1000)
    class_sum: np.ndarray  # (n,) summed probability of ImageNet's garment and textile classes
    garment: np.ndarray  # (n,) 0/1
    groups: np.ndarray  # (n,)
    photos: int
    labels_by_kind: dict[str, int] = field(default_factory=dict)  # the photos' labelled boxes (garment, hand, ...)
    network: dict[str, Any] = field(default_factory=dict)  # the check's network the log-probabilities came from
    # (n, channels): the network's last feature map of each crop averaged over its cells (``collect_crops(pooled=True)``)
    pooled: np.ndarray | None = None
    # (n, 2, inputs): what the head reads of each crop's mirror images (textile_check.MIRRORS), with mirrors
    mirrored: np.ndarray | None = None
    # each crop's photo and the (x0, y0, x1, y1) region the check cut it from: to show the head's mistakes
    where: list[tuple[Path, tuple[int, int, int, int]]] = field(default_factory=list)


def collect_crops(cfg: HeadFitConfig, *, pooled: bool = False) -> Crops:
    """Run the line's segmentation (without the check) on the labelled photos; one row per garment detection; with
    ``pooled`` (or a head on the features), each crop's pooled feature map too (a network without the map is
    refused by :meth:`TextileCheck.outputs`)."""
    pooled = pooled or cfg.inputs == "features"
    line = load_line_config(cfg.line)
    boxes = read_boxes_csv(cfg.boxes)
    if cfg.extra_labels is not None:
        boxes = merge_box_files(boxes, read_boxes_csv(cfg.extra_labels))
    found, missing = photo_frames(cfg.photos, boxes, cfg.boxes, subset=read_subset(cfg.subset) if cfg.subset else None)
    for problem in boxes.problems + missing:
        log.warning("%s", problem)
    # the network only (its log-probabilities): a head the line has now plays no part in fitting the next one
    network = {"head": None, **({"model": cfg.check_model} if cfg.check_model is not None else {})}
    check = TextileCheck((line.segmentation.textile_check or TextileCheckConfig()).model_copy(update=network),
                         crop_size=cfg.input_size, context=cfg.context)
    line.segmentation.textile_check = None  # the head learns from what the segmentation calls garments
    seg = LineSegmentation(line)
    classes = ClassSum(check.meta["textile_indices"])
    views = 1 + len(MIRRORS) if cfg.mirrors else 1
    rows: list[np.ndarray] = []
    pooled_rows: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    where: list[tuple[Path, tuple[int, int, int, int]]] = []
    labelled: Counter[str] = Counter()
    photos = 0
    for frame, why in tqdm(iter_photos(found, boxes), total=len(found), desc="fit-textile-check", unit="photo",
                           disable=not cfg.progress):
        if frame is None:
            log.warning("%s", why)
            continue
        try:
            detections = [d for d in seg.segment(frame.image, trim=False) if d.kind == GARMENT]
        except FrameError as exc:
            log.warning("%s: %s", frame.name, exc)
            continue
        photos += 1
        labelled.update(lb.kind for lb in frame.labels)
        if not detections:
            continue
        logprobs, features, _ = check.view_outputs(frame.image, [d.bbox for d in detections], views=views,
                                                   features=pooled)
        rows.append(logprobs)
        if features is not None:
            pooled_rows.append(features)
        labels.extend(_labels(detections, frame.labels, cfg.match_iou))
        groups.extend([photo_group(frame.name, cfg.group_size)] * len(detections))
        size = (frame.image.shape[1], frame.image.shape[0])
        where.extend((found[frame.index][1], check.crop_region(d.bbox, size)) for d in detections)
    if not rows:
        raise DataError(f"no garment detection in the labelled photos of {cfg.boxes}: nothing to fit on")
    logprobs = np.concatenate(rows)  # (n, views, 1000)
    features = np.concatenate(pooled_rows) if pooled else None
    read = features if cfg.inputs == "features" else logprobs
    return Crops(logprobs[:, 0], classes.score(logprobs), np.asarray(labels), np.asarray(groups), photos,
                 dict(sorted(labelled.items())), {"file": check.path.name, "quantized": check.quantized},
                 None if features is None else features[:, 0], read[:, 1:] if cfg.mirrors else None, where)


def _labels(detections: list[Any], labels: list[Any], match_iou: float) -> list[int]:
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (d.bbox for d in detections)]
    garments = [lb.box for lb in labels if lb.kind == GARMENT]
    others = [lb.box for lb in labels if lb.kind != GARMENT]
    g = iou_matrix(boxes, garments).max(axis=1) if garments else np.zeros(len(boxes))
    o = iou_matrix(boxes, others).max(axis=1) if others else np.zeros(len(boxes))
    return [int(a >= match_iou and a >= b) for a, b in zip(g, o)]


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, model: Callable[[], Any], *,
                training: Callable[[np.ndarray], np.ndarray] | None = None,
                mirrored: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold scores of the crops, ``folds`` folds of whole scene groups, each fold's head a fresh ``model()``
    (a scikit-learn classifier); ``training`` may thin each fold's training rows (a learning curve); ``mirrored``
    (n, views, inputs): each fold's head learns from the crops' mirror images too and scores the mean over a crop's
    views. A fold whose training rows are all of one class cannot be fitted: its crops get that class's share."""
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(y))
    for train, test in GroupKFold(folds).split(x, y, groups):
        train = train if training is None else training(train)
        if y[train].min() == y[train].max():
            scores[test] = y[train].mean()
            continue
        head = fit_on_views(model(), x[train], y[train], None if mirrored is None else mirrored[train])
        scores[test] = np.mean([head.predict_proba(view)[:, 1] for view in _views(x[test], mirrored, test)], axis=0)
    return scores


def _views(x: np.ndarray, mirrored: np.ndarray | None, rows: np.ndarray | slice = slice(None)) -> list[np.ndarray]:
    """The crops' inputs, then their mirror images' (one array a view)."""
    return [x] + ([] if mirrored is None else [mirrored[rows][:, k] for k in range(mirrored.shape[1])])


def fit_on_views(model: Any, x: np.ndarray, y: np.ndarray, mirrored: np.ndarray | None) -> Any:
    """``model`` fitted on the crops ``x`` and, if given, their mirror images (n, views, inputs) as more rows."""
    views = _views(x, mirrored)
    return model.fit(np.concatenate(views), np.tile(y, len(views)))


def head_model(regularisation: float, *, standardise: bool) -> Any:
    """A fresh, unfitted head: a logistic regression of inverse strength ``regularisation``; with ``standardise``
    behind a scaler fitted on the same rows (the pooled features: 1,280 values of unlike scales, so that one
    regularisation serves them all)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = LogisticRegression(C=regularisation, max_iter=5000)
    return make_pipeline(StandardScaler(), head) if standardise else head


def fit_head(crops: Crops, cfg: HeadFitConfig) -> tuple[TextileHead, np.ndarray]:
    """The head with its out-of-fold threshold (keeps ``cfg.keep`` of the garments) and figures, and the
    out-of-fold scores of the crops."""
    from sklearn.metrics import roc_auc_score

    features = cfg.inputs == "features"
    if features and crops.pooled is None:
        raise DataError("a head on the features needs the crops' pooled features (collect_crops(pooled=True))")
    x, y = (crops.pooled if features else crops.logprobs).astype(np.float64), crops.garment
    n_groups = len(set(crops.groups.tolist()))
    if y.min() == y.max() or n_groups < 2:
        raise DataError(f"{len(y)} crops ({int(y.sum())} garments) in {n_groups} scene groups: a head needs garments "
                        "and non-garments, in two scene groups at least")

    def model() -> Any:
        return head_model(cfg.regularisation, standardise=features)

    mirrored = None if crops.mirrored is None else crops.mirrored.astype(np.float64)
    oof = out_of_fold(x, y, crops.groups, min(cfg.folds, n_groups), model, mirrored=mirrored)
    threshold = float(np.quantile(oof[y == 1], 1.0 - cfg.keep))
    floor = float(np.quantile(crops.class_sum[y == 1], cfg.floor_share))
    weights, bias = _linear(fit_on_views(model(), x, y, mirrored))
    info = {"fitted_on": {"line": str(cfg.line), "photos": crops.photos, "crops": int(len(y)),
                          "garments": int(y.sum()), "labels_by_kind": crops.labels_by_kind, "subset": cfg.subset,
                          "match_iou": cfg.match_iou, "check_model": crops.network},
            "cross_validation": {"folds": min(cfg.folds, n_groups), "group_size": cfg.group_size,
                                 "auc": round(float(roc_auc_score(y, oof)), 4),
                                 "garments_kept": round(float((oof[y == 1] >= threshold).mean()), 4),
                                 "others_removed": round(float((oof[y == 0] < threshold).mean()), 4)},
            # ImageNet's textile classes sum to less than this on floor_share of the garment crops (at input_size)
            "class_floor": {"value": round(floor, 5), "garments_below": cfg.floor_share,
                            "others_below": round(float((crops.class_sum[y == 0] < floor).mean()), 4)},
            "regularisation": cfg.regularisation}
    return TextileHead(weights, bias, threshold, cfg.input_size, info, cfg.context, cfg.inputs,
                       crops.mirrored is not None), oof


def _linear(fitted: Any) -> tuple[np.ndarray, float]:
    """Weights and bias on the raw inputs of a fitted logistic regression, a standardisation before it (a
    pipeline) folded in: ``w / scale`` and ``b - sum(w * mean / scale)``."""
    steps = [step for _, step in fitted.steps] if hasattr(fitted, "steps") else [fitted]
    regression = steps[-1]
    weights, bias = regression.coef_[0].astype(np.float64), float(regression.intercept_[0])
    for scaler in steps[:-1]:
        weights = weights / scaler.scale_
        bias -= float(weights @ scaler.mean_)
    return weights, bias


def plot_scores(oof: np.ndarray, garment: np.ndarray, threshold: float, path: str | Path) -> Path:
    """Out-of-fold scores of garments and of the rest, and the threshold: what the head will keep and remove."""
    from sorting.models.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(oof[garment == 1], bins=bins, alpha=0.6, color="#55a868", label=f"garments ({int(garment.sum())})")
    ax.hist(oof[garment == 0], bins=bins, alpha=0.6, color="#c44e52", label=f"the rest ({int((garment == 0).sum())})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"min_score {threshold:.2f}")
    ax.set_xlabel("textile score, out of fold")
    ax.set_ylabel("crops")
    ax.set_title("textile check head: garment detections of the line")
    ax.legend()
    return save_figure(fig, path)


def unseen_kinds(labels_by_kind: dict[str, int]) -> list[str]:
    """The non-garment kinds (hand, object) of which the labelled photos show fewer than :data:`MIN_SEEN`: a head
    fitted on them has not learnt to reject those (a line set up on photos without phones lets phones through)."""
    return [kind for kind in NON_GARMENT_KINDS if labels_by_kind.get(kind, 0) < MIN_SEEN]


def mistakes_path(head_path: str | Path) -> Path:
    """Where ``fit-textile-check`` writes the sheet of the head's out-of-fold mistakes: beside the head file."""
    path = Path(head_path)
    return path.with_name(f"{path.stem}-mistakes.png")


def fit_textile_head(cfg: HeadFitConfig) -> TextileHead:
    """Collect, fit, write ``cfg.out``, a plot of its out-of-fold scores next to it (``.png``) and a sheet of the
    crops it gets wrong out of fold (:func:`mistakes_path`); warns when the photos show (almost) no hand or object."""
    if not 1.0 <= cfg.context <= MAX_CONTEXT:
        raise ConfigError(f"--context {cfg.context}: a crop is its box grown 1 to {MAX_CONTEXT} times")
    crops = collect_crops(cfg)
    for kind in unseen_kinds(crops.labels_by_kind):
        log.warning("the labelled photos show %d %s(s): the head has not learnt to reject them; if the line will "
                    "meet them, fit it on photos that show them, labelled (--labels)", crops.labels_by_kind.get(kind, 0),
                    kind)
    head, oof = fit_head(crops, cfg)
    head.save(cfg.out)
    plot_scores(oof, crops.garment, head.min_score, Path(cfg.out).with_suffix(".png"))
    mistakes_path(cfg.out).unlink(missing_ok=True)  # an earlier head's sheet would say the wrong thing
    mistakes_sheet(crops.where, oof, crops.garment, head.min_score, mistakes_path(cfg.out))
    return head


# a fitted head this sure overrules the object rule; chosen by scene cross-validation on the development photos
# (benchmarks/belt_cross_validation.py): 0.9 and 0.95 both gave back folded garments without letting a hand or an
# object more through; 0.95 is the stricter of the two
OBJECTS_BACK_FROM = 0.95


def write_head_into_line(line_path: str | Path, head_path: str | Path, *, check_model: str | Path | None = None) -> Path:
    """Point the line's ``segmentation.textile_check.head`` at ``head_path`` (relative to the line's folder), set
    the head's own ``class_floor`` and drop the line's ``min_score`` and ``class_floor`` (the head brings its own,
    fitted at its crop size), turn carving on (``carve``, which needs a head: garments cut out of clumps) and let
    the head overrule the object rule when it is sure (``objects_back_from``); what the line already says of these
    two is kept; every other key and the leading comment kept, the previous file kept as ``<name>.bak``. With
    ``check_model`` (the network the head was fitted on), ``textile_check.model`` points at it too."""
    path = Path(line_path)
    data, header = open_line_for_rewrite(path)
    note = ("# segmentation.textile_check.head: fitted by `textile-sorter fit-textile-check` (what on: the "
            "head file's fitted_on).\n")
    header = "".join(line for line in header.splitlines(keepends=True) if line != note) + note
    head = Path(head_path).resolve()
    segmentation = dict(data.get("segmentation") or {})
    check = {k: v for k, v in (segmentation.get("textile_check") or {}).items() if k not in ("min_score", "class_floor")}
    if check_model is not None:
        check["model"] = relative_to_line(Path(check_model).resolve(), path)
    floor = TextileHead.load(head).info.get("class_floor", {}).get("value")
    segmentation["textile_check"] = {"carve": {}, "objects_back_from": OBJECTS_BACK_FROM,
                                     **({"class_floor": floor} if floor else {}), **check,
                                     "head": relative_to_line(head, path)}
    data["segmentation"] = segmentation
    write_line(path, data, header)
    load_line_config(path)  # the line still loads, with the head
    return path
