"""Audio backbones. Importing this package registers ``bundled:whisper_tiny_en_encoder``,
``bundled:speech_embedding`` and ``scratch_cnn`` (heavy libraries load only when one is built).
:class:`AudioAugment` holds the augmentation knobs (config key ``augment.audio``)."""

from transfuse.backbones.audio import scratch_cnn, speech_embedding, whisper_ct2
from transfuse.backbones.audio.common import AudioAugment, AudioBackbone, AudioTransform

__all__ = ["AudioAugment", "AudioBackbone", "AudioTransform", "scratch_cnn", "speech_embedding",
           "whisper_ct2"]
