"""Labels of spectra: fibre classes, blend compositions and swatch ids, from a labels CSV or the file name.

- The classes a spectral model may predict are the taxonomy's fibre classes plus :data:`BACKGROUND`
  (nothing under the sensor: the bare belt). Source names go through ``datasets/aliases/fibre.yaml``.
- A blend is a composition ``{fibre: share %}`` written ``cotton:55,polyester:45`` (shares sum to 100). The
  taxonomy's ``blends`` section (:class:`BlendRules`) says which class it is sorted as.
- File names are parsed by ``datasets/aliases/spectra-names.yaml`` (:class:`NameRules`): regex patterns first,
  then a token rule (``Blend_Cotton55_Polyester45_Fold4_1`` -> polycotton, swatch ``Blend_Cotton55_Polyester45``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sorting.config import read_yaml
from sorting.errors import ConfigError
from sorting.paths import project_root
from sorting.taxonomy import AliasMap, Taxonomy, load_aliases, load_taxonomy

BACKGROUND = "background"
COMPOSITION_TOLERANCE = 1.0  # shares may sum to 100 +- this (rounded labels)
_TOKEN_SPLIT = re.compile(r"[_\-\s]+")
_SHARE_TOKEN = re.compile(r"^([A-Za-z]+)(\d+(?:\.\d+)?)$")


class LabelError(ConfigError):
    """A label, composition or name that cannot be resolved (the import turns it into a reject)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def format_composition(shares: dict[str, float]) -> str:
    """``{"polyester": 45, "cotton": 55}`` -> ``cotton:55,polyester:45`` (largest share first, then name)."""
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return ",".join(f"{name}:{share:g}" for name, share in ordered)


@dataclass(frozen=True)
class BlendRules:
    """The taxonomy's ``blends`` section: a composition -> one fibre class (see datasets/taxonomy.yaml)."""

    pure_share: float = 95.0
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    otherwise: str = "other"

    @classmethod
    def load(cls, taxonomy_path: str | Path | None, taxonomy: Taxonomy) -> "BlendRules":
        path = Path(taxonomy_path) if taxonomy_path else project_root() / "datasets" / "taxonomy.yaml"
        data = read_yaml(path).get("blends") or {}
        rules = cls(float(data.get("pure_share", 95)),
                    {str(k): tuple(v) for k, v in (data.get("classes") or {}).items()},
                    str(data.get("otherwise", "other")))
        unknown = [c for c in (*rules.classes, rules.otherwise) if c not in taxonomy.fibre]
        unknown += [f for fibres in rules.classes.values() for f in fibres if f not in taxonomy.fibre]
        if unknown:
            raise ConfigError(f"taxonomy {path}: blends name classes it does not have: {sorted(set(unknown))}")
        return rules

    def classify(self, shares: dict[str, float]) -> str:
        """The class a composition is sorted as."""
        main, share = max(shares.items(), key=lambda kv: (kv[1], kv[0]))
        if share >= self.pure_share:
            return main
        present = {f for f, s in shares.items() if s > 0}
        for target, fibres in self.classes.items():
            if present <= set(fibres):
                return target
        return self.otherwise


@dataclass(frozen=True)
class SpectralLabels:
    """Taxonomy + fibre aliases + blend rules: raw names and compositions -> spectral classes."""

    taxonomy: Taxonomy
    aliases: AliasMap
    blends: BlendRules

    @classmethod
    def load(cls, taxonomy: str | Path | None = None, aliases: str | Path | None = None) -> "SpectralLabels":
        tax = load_taxonomy(taxonomy)
        return cls(tax, load_aliases("fibre", aliases), BlendRules.load(taxonomy, tax))

    @property
    def classes(self) -> tuple[str, ...]:
        return (*self.taxonomy.fibre, BACKGROUND)

    def resolve(self, raw: str | None) -> str | None:
        """A source name (``Nylon``, ``Background``) -> class, or None when it names none."""
        return self.aliases.resolve(raw, self.classes)

    def fibre(self, raw: str) -> str:
        """A fibre name inside a composition -> taxonomy fibre class (LabelError when unknown)."""
        resolved = self.aliases.resolve(raw, self.taxonomy.fibre)
        if resolved is None:
            raise LabelError(f"unknown label '{raw}'", "not a fibre of the taxonomy nor in its alias map")
        return resolved

    def composition(self, parts: dict[str, float] | str) -> dict[str, float]:
        """``cotton:55,polyester:45`` (or a dict of raw names) -> {taxonomy fibre: share}, checked to sum to 100."""
        if isinstance(parts, str):
            parts = _split_composition(parts)
        shares: dict[str, float] = {}
        for raw, share in parts.items():
            if not 0 <= share <= 100:
                raise LabelError("bad composition", f"{raw}:{share:g} is not a share in %")
            fibre = self.fibre(raw)
            shares[fibre] = shares.get(fibre, 0.0) + float(share)
        total = sum(shares.values())
        if abs(total - 100.0) > COMPOSITION_TOLERANCE:
            raise LabelError("bad composition", f"{format_composition(shares)} sums to {total:g}, not 100")
        return shares


def _split_composition(text: str) -> dict[str, float]:
    parts: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition(":")
        try:
            parts[name.strip()] = float(value)
        except ValueError:
            raise LabelError("bad composition", f"'{text}' is not fibre:share,fibre:share") from None
        if not sep or not name.strip():
            raise LabelError("bad composition", f"'{text}' is not fibre:share,fibre:share")
    return parts


@dataclass(frozen=True)
class ParsedName:
    """What a file name says: a raw label and/or a composition, and the swatch it is a scan of."""

    label: str | None
    composition: dict[str, float] | None
    swatch: str


@dataclass(frozen=True)
class NameRules:
    """``datasets/aliases/spectra-names.yaml``: file-name patterns, pose tokens and per-scan classes."""

    patterns: tuple[re.Pattern[str], ...] = ()
    pose_tokens: tuple[str, ...] = ()
    per_scan_groups: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None) -> "NameRules":
        path = Path(path) if path else project_root() / "datasets" / "aliases" / "spectra-names.yaml"
        data = read_yaml(path)
        try:
            patterns = tuple(re.compile(p) for p in data.get("patterns") or [])
        except re.error as exc:
            raise ConfigError(f"{path}: bad pattern: {exc}") from None
        return cls(patterns, tuple(str(t).lower() for t in data.get("pose_tokens") or []),
                   tuple(data.get("per_scan_groups") or []))

    def parse(self, stem: str, labels: SpectralLabels) -> ParsedName:
        """Label, composition and swatch from a file stem (LabelError when no label can be found)."""
        for pattern in self.patterns:
            match = pattern.search(stem)
            if match:
                return _from_match(match, labels)
        return self._from_tokens(stem, labels)

    def _is_pose(self, token: str) -> bool:
        word = token.rstrip("0123456789").lower()
        return word in self.pose_tokens

    def _from_tokens(self, stem: str, labels: SpectralLabels) -> ParsedName:
        tokens = [t for t in _TOKEN_SPLIT.split(stem) if t]
        shares = {}
        for token in tokens:
            m = _SHARE_TOKEN.match(token)
            if m and labels.aliases.resolve(m.group(1), labels.taxonomy.fibre):
                shares[m.group(1)] = float(m.group(2))
        composition = shares if len(shares) >= 2 else None
        label = None
        for n in (2, 1):  # two-word names first ("Organic Cotton")
            label = next((" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)
                          if labels.resolve(" ".join(tokens[i:i + n]))), None)
            if label:
                break
        if composition is None and label is None:
            raise LabelError("no label", f"no fibre, blend or background named in '{stem}'")
        kept = list(tokens)
        if kept and kept[-1].isdigit():
            kept.pop()
        kept = [t for t in kept if not self._is_pose(t)] or tokens
        return ParsedName(label if composition is None else None, composition, "_".join(kept))


def _from_match(match: re.Match[str], labels: SpectralLabels) -> ParsedName:
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    label = groups.pop("fibre", None)
    swatch = groups.pop("swatch", None) or match.group(0)
    composition = None
    if groups:
        try:
            composition = {name: float(value) for name, value in groups.items()}
        except ValueError:
            raise LabelError("bad composition", f"pattern groups {groups} are not shares") from None
    if label is None and composition is None:
        raise LabelError("no label", f"pattern '{match.re.pattern}' names no fibre or composition")
    return ParsedName(label, composition, swatch)
