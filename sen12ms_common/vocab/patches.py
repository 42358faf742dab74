"""SEN12MS patch identifiers: parse and format names, sibling paths, scene keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from ..errors import InputError

SEASONS: tuple[str, ...] = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
MODALITIES: tuple[str, ...] = ("s1", "s2", "lc")

# DFC2020 subset "seasons" -> the subset's name; their own modalities and file name pattern.
DFC2020_SEASONS: dict[str, str] = {"ROIs0000_validation": "validation", "ROIs0000_test": "test"}
DFC2020_MODALITIES: tuple[str, ...] = ("s1", "s2", "lc", "dfc")

# The one triplet of SEN12MS whose S1 is damaged; the official train list leaves it out.
KNOWN_BROKEN: frozenset[str] = frozenset({"ROIs1868_summer_s2_146_p202"})

_SEASON_RE = "|".join(SEASONS)
_PATCH_RE = re.compile(rf"^(?P<season>{_SEASON_RE})_(?P<mod>s1|s2|lc)_(?P<scene>\d+)_p(?P<patch>\d+)(?:\.tiff?)?$")
_DFC2020_RE = re.compile(r"^(?P<season>ROIs0000_validation|ROIs0000_test)_(?P<mod>s1|s2|lc|dfc)_(?P<scene>\d+)"
                         r"_p(?P<patch>\d+)(?:\.tiff?)?$")
_SCENE_RE = re.compile(rf"^(?P<season>{_SEASON_RE})[/_](?:(?:s1|s2|lc)_)?(?P<scene>\d+)/?$")


@dataclass(frozen=True, order=True)
class SceneId:
    """One scene (ROI) of one season, e.g. `ROIs1158_spring` scene 63."""

    season: str
    scene: int

    def folder(self, modality: str = "s2") -> str:
        """The scene's folder relative to the dataset root: `ROIs1158_spring/s2_63`
        (DFC2020 validation: `ROIs0000_validation/s2_validation`)."""
        return f"{self.season}/{_folder_name(self.season, modality, self.scene)}"

    @property
    def key(self) -> str:
        """A string key for grouping: `ROIs1158_spring_63`."""
        return f"{self.season}_{self.scene}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, order=True)
class PatchId:
    """One patch of one modality: season, scene, patch number and modality."""

    season: str
    scene: int
    patch: int
    modality: str = "s2"

    @property
    def scene_id(self) -> SceneId:
        return SceneId(self.season, self.scene)

    def with_modality(self, modality: str) -> "PatchId":
        known = DFC2020_MODALITIES if self.season in DFC2020_SEASONS else MODALITIES
        if modality not in known:
            raise InputError(f"unknown modality {modality!r} (expected one of {known})")
        return replace(self, modality=modality)

    def stem(self, modality: str | None = None) -> str:
        mod = modality or self.modality
        return f"{self.season}_{mod}_{self.scene}_p{self.patch}"

    def filename(self, modality: str | None = None) -> str:
        """File name, `ROIs1158_spring_s2_1_p30.tif` (the original's label and split key for s2)."""
        return self.stem(modality) + ".tif"

    def relpath(self, modality: str | None = None) -> str:
        """Path relative to the dataset root: `ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif`."""
        mod = modality or self.modality
        return f"{self.season}/{_folder_name(self.season, mod, self.scene)}/{self.filename(mod)}"

    @property
    def key(self) -> str:
        """The sample key in shards: the S2 stem, `ROIs1158_spring_s2_1_p30`."""
        return self.stem("s2")

    @property
    def is_known_broken(self) -> bool:
        return self.key in KNOWN_BROKEN

    def __str__(self) -> str:
        return self.stem()


def _folder_name(season: str, modality: str, scene: int) -> str:
    if DFC2020_SEASONS.get(season) == "validation":
        return f"{modality}_validation"
    return f"{modality}_{scene}"


def _parse(name: str, pattern: re.Pattern[str], what: str, example: str) -> PatchId:
    base = PurePosixPath(str(name).replace("\\", "/")).name
    m = pattern.match(base)
    if not m:
        raise InputError(f"not a {what} patch name: {name!r} (expected e.g. {example})")
    return PatchId(m["season"], int(m["scene"]), int(m["patch"]), m["mod"])


def parse_patch(name: str) -> PatchId:
    """Parse a patch name or path (`ROIs1158_spring_s2_1_p30`, with or without `.tif`)."""
    return _parse(name, _PATCH_RE, "SEN12MS", "ROIs1158_spring_s2_1_p30.tif")


def parse_dfc2020_patch(name: str) -> PatchId:
    """Parse a DFC2020 patch name or path (`ROIs0000_test_dfc_0_p123`, with or without `.tif`)."""
    return _parse(name, _DFC2020_RE, "DFC2020", "ROIs0000_validation_s2_0_p123.tif")


def parse_any_patch(name: str) -> PatchId:
    """Parse a SEN12MS or a DFC2020 patch name (sample keys of a shard set may be either)."""
    try:
        return parse_patch(name)
    except InputError:
        pass
    try:
        return parse_dfc2020_patch(name)
    except InputError:
        raise InputError(f"not a SEN12MS or DFC2020 patch name: {name!r} (expected e.g. "
                         "ROIs1158_spring_s2_1_p30.tif or ROIs0000_test_s2_0_p30.tif)") from None


def is_dfc2020(pid: PatchId) -> bool:
    return pid.season in DFC2020_SEASONS


def parse_scene(name: str) -> SceneId:
    """Parse a scene name as the hold-out list writes it (`ROIs1158_spring/s1_63`) or a key."""
    m = _SCENE_RE.match(str(name).strip())
    if not m:
        raise InputError(
            f"not a SEN12MS scene name: {name!r} (expected e.g. ROIs1158_spring/s1_63)"
        )
    return SceneId(m["season"], int(m["scene"]))
