"""Data sections: ``data``, ``split``, ``augment`` and ``preprocess``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from transfuse.config.base import Section


def absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``data`` section whose relative ``path``/``test_path`` that exist (from the
    current directory) are absolute, so a run folder's config works from any directory (resume,
    predict, export); a path that does not exist is left for the data source to report."""
    out = dict(data)
    for key in ("path", "test_path"):
        v = out.get(key)
        if isinstance(v, str) and v and not Path(v).is_absolute():
            try:
                p = Path(v).expanduser()
                if p.exists():
                    out[key] = str(p.resolve())
            except (OSError, ValueError):
                pass
    return out


class DataConfig(Section):
    """Where the labelled data comes from (``source`` is a registered data source)."""

    source: str = "folder"
    path: str | None = None
    modality: Literal["image", "text", "audio", "multimodal"] = "image"
    options: dict[str, Any] = Field(default_factory=dict)
    #: An external test set (another source or a shifted domain) instead of a split of ``path``.
    test_source: str | None = None
    test_path: str | None = None
    test_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any) -> Any:
        return absolute_paths(data) if isinstance(data, dict) else data


class SplitConfig(Section):
    """Cross-validation folds and the held-out test fraction."""

    folds: int = Field(5, ge=2, le=20)
    test_size: float = Field(0.2, gt=0.0, lt=0.9)


class ImageAugment(Section):
    """Training-time augmentation (ignored at evaluation). ``enabled: false`` turns it all off."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a vertical flip")
    random_resized_crop: tuple[float, float] | None = Field(
        (0.5, 1.0), description="area fraction range of the random crop; null for resize + center crop"
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="aspect ratio range of the random crop"
    )
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation in degrees (both ways)")
    color_jitter: float = Field(0.2, ge=0.0, le=1.0, description="brightness/contrast/saturation strength")
    hue: float = Field(0.0, ge=0.0, le=0.5, description="hue jitter")
    randaugment: bool = False
    randaugment_ops: int = Field(2, ge=1, le=10)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing a random patch")

    @model_validator(mode="after")
    def _check_ranges(self) -> ImageAugment:
        if self.random_resized_crop is not None:
            lo, hi = self.random_resized_crop
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(
                    f"random_resized_crop must be (low, high) with 0 < low <= high <= 1, got {self.random_resized_crop}"
                )
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {self.crop_ratio}")
        return self


class AudioAugment(Section):
    """Training-time audio augmentation (config key ``augment.audio``). Each step fires with its
    probability; set a probability to 0 to switch the step off."""

    noise_prob: float = Field(0.5, ge=0, le=1, description="chance of adding white noise")
    snr_db: tuple[float, float] = Field((10.0, 30.0), description="noise SNR range in dB")
    shift_prob: float = Field(0.5, ge=0, le=1, description="chance of a time shift")
    shift_seconds: float = Field(0.1, ge=0, description="largest shift, either direction")
    gain_prob: float = Field(0.5, ge=0, le=1, description="chance of a gain change")
    gain_db: float = Field(6.0, ge=0, description="largest gain change, up or down, in dB")
    speed_prob: float = Field(0.3, ge=0, le=1, description="chance of a speed/pitch change")
    speed: tuple[float, float] = Field((0.9, 1.1), description="speed factor range (pitch moves too)")
    specaugment_prob: float = Field(0.5, ge=0, le=1, description="chance of SpecAugment masks")
    freq_masks: int = Field(2, ge=0, description="SpecAugment frequency masks")
    freq_width: int = Field(8, ge=0, description="widest frequency mask, in mel bins")
    time_masks: int = Field(2, ge=0, description="SpecAugment time masks")
    time_width: int = Field(10, ge=0, description="widest time mask, in frames (10 ms each)")

    @model_validator(mode="after")
    def _ranges(self) -> AudioAugment:
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db={list(self.snr_db)} must be [low, high] with low <= high")
        if not 0 < self.speed[0] <= self.speed[1] <= 4:
            raise ValueError(f"speed={list(self.speed)} must be [low, high] with 0 < low <= high <= 4")
        return self


class AugmentConfig(Section):
    """Training-time augmentation per modality."""

    image: ImageAugment = ImageAugment()
    audio: AudioAugment = AudioAugment()


class TextCleaning(Section):
    """How texts are cleaned before use (config key ``preprocess.text``).

    Steps run in this order: e-mail parsing, HTML stripping, Unicode NFKC, whitespace collapse,
    then the length limit. A text longer than ``max_chars`` is cut to ``max_chars`` (``on_long:
    truncate``, logged; a tokenizer reads only the first few hundred tokens anyway) or left out
    (``on_long: quarantine``).
    """

    unicode_nfkc: bool = True
    collapse_whitespace: bool = True
    strip_html: bool = False
    strip_email_headers: bool = False
    max_chars: int = Field(20_000, ge=1)
    on_long: Literal["truncate", "quarantine"] = "truncate"


class PreprocessConfig(Section):
    """Input preprocessing shared by training and evaluation."""

    #: Override the backbone's input resolution (images); ``null`` keeps the pretrained size.
    image_size: int | None = Field(None, ge=16, le=1024)
    text: TextCleaning = TextCleaning()
